/**
 * posternd's stop is bounded: when a component cannot finish (here the database host hangs: every
 * PostgreSQL process stopped, its connections open and silent), posternd names the component in
 * its log after 5 s and exits 1 with the reason after 20 s, instead of hanging until killed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestPostgres, spawnPosternd } from '../harness/index.js';

describe('posternd stop limit', () => {
  let pgSrv: TestPostgres;
  let dir: string;
  before(async () => {
    pgSrv = await TestPostgres.create();
    dir = mkdtempSync(join(tmpdir(), 'postern-stop-'));
  });
  after(async () => {
    // thaw() first: a stopped server would not end on destroy()'s SIGINT.
    pgSrv?.thaw();
    await pgSrv?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exits 1 after 20 s, naming what did not stop, when the database hangs', async () => {
    const db = await pgSrv.createDatabase('stoplimit');
    const d = await spawnPosternd(['up', '--domain', 'stop.test', '--database', db, '--listen', '127.0.0.1:0', '--public-listen', '127.0.0.1:0'], { cwd: dir });
    const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => d.proc.once('exit', (code, signal) => resolve({ code, signal })));
    const t0 = Date.now();
    try {
      pgSrv.freeze();
      d.proc.kill('SIGTERM');
      const limit = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`posternd still running 40 s after SIGTERM:\n${d.logs()}`)), 40_000).unref());
      const { code, signal } = await Promise.race([ended, limit]);
      const took = Date.now() - t0;
      assert.equal(signal, null, d.logs());
      assert.equal(code, 1, d.logs());
      // The limit is 20 s; the bin exits 1 s after a non-zero code (its log is flushed first).
      assert.ok(took >= 19_500 && took < 25_000, `stopped after ${took} ms`);
      const log = d.logs();
      assert.match(log, /"component":"the store","msg":"still stopping after 5 s"/);
      assert.match(log, /posternd did not finish stopping within 20 s; exiting anyway \[ERR_INTERNAL\]/);
      assert.match(log, /Stopping \(SIGTERM\): answering requests in progress/);
      assert.doesNotMatch(log, /^Stopped\.$/m);
    } finally {
      pgSrv.thaw();
      if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill('SIGKILL');
    }
  });
});
