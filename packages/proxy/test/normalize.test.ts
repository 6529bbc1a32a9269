import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { normalizeTarget } from '../src/normalize.js';

describe('request-target normalisation', () => {
  it('normalises the known evasions', () => {
    const cases: [string, string][] = [
      ['/public/../admin', '/admin'],
      ['/%2e%2e/admin', '/admin'],
      ['/public%2f..%2fadmin', '/admin'],
      ['//admin', '/admin'],
      ['/a/./b/', '/a/b/'],
      ['/a/b/..', '/a/'],
      ['/%41%7e%2F', '/A~/'],
      ['/a%3f', '/a%3F'],
      ['/api/items', '/api/items'],
      ['/a.b/..c/.d', '/a.b/..c/.d'],
      // Path parameters stay where they do not make a dot segment.
      ['/a;jsessionid=1/b', '/a;jsessionid=1/b'],
      ['/a/...;x/b', '/a/...;x/b'],
      ['/a/..x;/b', '/a/..x;/b'],
    ];
    for (const [raw, want] of cases) {
      const r = normalizeTarget(raw);
      assert.ok(r.ok, raw);
      assert.equal(r.path, want, raw);
    }
    for (const bad of ['/a\\b', '/a%00', '/a%zz', '/a b', '/a#f', 'a', '/a/\u00e9']) assert.equal(normalizeTarget(bad).ok, false, bad);
  });

  it("refuses dot segments with path parameters, which Java servers read as '..' or '.'", () => {
    for (const bad of ['/public/..;/admin', '/..;x=1/admin', '/public/%2e%2e;/admin', '/public/%2E.;jsessionid=2/admin', '/a/.;/b', '/a//..;/b', '/public/..;']) {
      const r = normalizeTarget(bad);
      assert.equal(r.ok, false, bad);
      assert.match((r as { reason: string }).reason, /path parameters/, bad);
    }
  });

  it('is a fixpoint, leaves no dot segment or double slash, and keeps normal paths as they are (random paths)', () => {
    const alphabet = ['/', '/', 'a', 'b', '.', '..', '%2e', '%2E', '%2f', '%41', '%3f', '~', '-', '%5c', '\\', ';'];
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let i = 0; i < 20_000; i++) {
      let raw = '/';
      for (let j = rnd(12); j > 0; j--) raw += alphabet[rnd(alphabet.length)];
      const r = normalizeTarget(`${raw}?q=1`);
      if (!r.ok) {
        if (/path parameters/.test(r.reason)) assert.match(raw, /;/, `refused ${raw}: ${r.reason}`);
        else assert.match(raw, /\\|%5c/i, `refused ${raw}: ${r.reason}`);
        continue;
      }
      assert.doesNotMatch(r.path, /(^|\/)\.\.?;/, `${raw} → ${r.path}`);
      assert.equal(r.query, 'q=1');
      assert.doesNotMatch(r.path, /\/\/|\/\.\.?(\/|$)|%2[eEfF]/, `${raw} → ${r.path}`);
      const again = normalizeTarget(r.path);
      assert.ok(again.ok && again.path === r.path, `${raw} → ${r.path} → ${again.ok ? again.path : again.reason}`);
      if (!/%|\/\/|\/\.\.?(\/|$)/.test(raw)) assert.equal(r.path, raw);
    }
  });
});
