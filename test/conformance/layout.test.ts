import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

const repo = join(import.meta.dirname, '../../..');

/** Which Postern packages each package may import (DESIGN.md: apis ← store, policy ← servers ← posternd/cli). */
const allowed: Record<string, string[]> = {
  'packages/apis': [],
  'packages/store': ['apis'],
  'packages/policy': ['apis'],
  'packages/authserver': ['apis', 'store'],
  'packages/proxy': ['apis', 'store', 'policy', 'authserver'],
  'packages/dns': ['apis', 'store'],
  'packages/controller': ['apis', 'store'],
  'gateway-agent': ['apis', 'store'],
  'packages/apiserver': ['apis', 'store', 'policy', 'authserver', 'proxy'],
  'packages/cluster': ['apis', 'store', 'policy', 'authserver', 'apiserver', 'proxy', 'dns', 'controller', 'gateway-agent'],
  cli: ['apis', 'store', 'policy', 'authserver', 'apiserver', 'cluster', 'gateway-agent'],
};

const sources = (dir: string): string[] =>
  readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) return n === 'gen' ? [] : sources(p);
    return p.endsWith('.ts') ? [p] : [];
  });

describe('repository layout', () => {
  for (const [pkg, deps] of Object.entries(allowed)) {
    it(`${pkg} opens with a module comment and imports only ${deps.join(', ') || 'no other Postern package'}`, () => {
      const index = readFileSync(join(repo, pkg, 'src/index.ts'), 'utf8');
      assert.match(index, /^\/\*\*\n \* [^\n]+/, `${pkg}/src/index.ts must open with a /** module comment */`);
      for (const file of sources(join(repo, pkg, 'src'))) {
        const text = readFileSync(file, 'utf8');
        for (const m of text.matchAll(/from '@postern\/([\w-]+)'/g)) {
          assert.ok(deps.includes(m[1]!), `${file} imports @postern/${m[1]}, which ${pkg} must not`);
        }
        assert.ok(!/^export default /m.test(text), `${file} has a default export`);
      }
    });
  }

  it('keeps source files under 600 lines', () => {
    for (const pkg of Object.keys(allowed)) {
      for (const file of sources(join(repo, pkg, 'src'))) {
        const lines = readFileSync(file, 'utf8').split('\n').length;
        assert.ok(lines < 600, `${file} has ${lines} lines`);
      }
    }
  });
});
