/**
 * posternd's log writer: to a regular file, each turn's lines are written before the next turn
 * (synchronously, no thread-pool thread); to a pipe, asynchronously and still within a second.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

/** Logs one line, then after `waitMs` prints whether the file at LOG_FILE (if any) holds it. */
const child = `
import { readFileSync } from 'node:fs';
import { posterndLogger } from '@postern/cluster';
const { logger } = posterndLogger();
logger.info({ n: 1 }, 'first line');
const report = () => {
  process.stdout.write(process.env.LOG_FILE ? String(readFileSync(process.env.LOG_FILE, 'utf8').includes('first line')) : 'done');
  process.exit(0);
};
const wait = Number(process.env.WAIT_MS);
if (wait) setTimeout(report, wait);
else setImmediate(() => setImmediate(report)); // the turn that logged has ended, and one more
`;

function run(stderr: number | 'pipe', env: Record<string, string>): Promise<{ out: string; err: string }> {
  const p = spawn(process.execPath, ['--input-type=module', '-e', child], { cwd: import.meta.dirname, stdio: ['ignore', 'pipe', stderr], env: { ...process.env, ...env } });
  let out = '';
  let err = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (p.kill(), reject(new Error('the logging child did not finish'))), 20_000);
    p.once('exit', () => (clearTimeout(timer), resolve({ out, err })));
  });
}

describe('posternd log writer', () => {
  it('writes to a regular file before the next turn of the event loop', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'postern-log-'));
    try {
      const file = join(dir, 'posternd.log');
      const fd = openSync(file, 'a');
      const { out } = await run(fd, { LOG_FILE: file, WAIT_MS: '0' });
      closeSync(fd);
      // Asynchronous writing holds a short line until 4 KiB or its once-a-second flush: false.
      assert.equal(out, 'true');
      const line = JSON.parse(readFileSync(file, 'utf8').trim().split('\n')[0]!) as { msg: string; n: number };
      assert.equal(line.msg, 'first line');
      assert.equal(line.n, 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes to a pipe asynchronously, within a second', async () => {
    const { out, err } = await run('pipe', { WAIT_MS: '1500' });
    assert.equal(out, 'done');
    assert.match(err, /"msg":"first line"/);
  });
});
