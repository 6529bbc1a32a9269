import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { AccessLog, type AccessLogEntry } from '../src/access-log.js';

const entry = (): AccessLogEntry => ({ rid: 'r-1', method: 'GET', path: '/a "quoted"\npath', status: 403, bytesIn: 0, bytesOut: 10, latencyMs: 1.5, service: 'api.default', user: 'dana', decision: 'DENY', reason: { type: 'NO_POLICY_MATCH' }, config: undefined });

describe('access log', () => {
  it('writes the line pino would write for the same entry, in the same order', () => {
    const lines: string[] = [];
    const logger = pino({ name: 'posternd', base: { pid: 7, hostname: 'h' } }, { write: (l: string) => void lines.push(l) }).child({ component: 'proxy' });
    new AccessLog(logger).write(entry());
    logger.info({ ...entry(), type: 'access' }, 'request');
    assert.equal(lines.length, 2);
    assert.ok(lines[0]!.endsWith('\n'));
    const [ours, theirs] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.equal(typeof ours!.time, 'number');
    delete ours!.time;
    delete theirs!.time;
    assert.deepEqual(Object.keys(ours!), Object.keys(theirs!));
    assert.deepEqual(ours, theirs);
    assert.equal(ours!.path, '/a "quoted"\npath');
    assert.equal('config' in ours!, false, 'undefined fields are left out, as pino does');
  });

  it('writes nothing when the level is above info', () => {
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    new AccessLog(logger).write(entry());
    assert.equal(lines.length, 0);
  });

  it('goes through the logger for streams that need pino’s metadata (multistream)', () => {
    const lines: string[] = [];
    const logger = pino({ level: 'info' }, pino.multistream([{ level: 'info', stream: { write: (l: string) => void lines.push(l) } }]));
    new AccessLog(logger).write(entry());
    assert.equal(lines.length, 1);
    assert.equal((JSON.parse(lines[0]!) as { msg: string }).msg, 'request');
  });
});
