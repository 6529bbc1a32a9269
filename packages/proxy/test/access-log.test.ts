import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { AccessLog, accessLogMembers, type AccessLogEntry } from '../src/access-log.js';

const entry = (): AccessLogEntry => ({ rid: 'r-1', method: 'GET', path: '/a "quoted"\npath', status: 403, bytesIn: 0, bytesOut: 10, latencyMs: 1.5, service: 'api.default', user: 'dana', decision: 'DENY', reason: { type: 'NO_POLICY_MATCH' }, config: undefined });

describe('access log', () => {
  it('writes the line pino would write for the same entry, in the same order', () => {
    const lines: string[] = [];
    const logger = pino({ name: 'posternd', base: { pid: 7, hostname: 'h' } }, { write: (l: string) => void lines.push(l) }).child({ component: 'proxy' });
    new AccessLog(logger).write(entry());
    logger.info({ type: 'access', ...entry() }, 'request');
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

  it('serialises every field exactly as JSON.stringify does, in a fixed order', () => {
    // A decision's reason is one frozen object per rule: serialised once, reused after.
    const shared = Object.freeze({ type: 'RULE', policy: 'p "one"', attachedTo: 'Service/a.default', rule: 'rule[0]', priority: -2 });
    const full: AccessLogEntry = { type: 'access', rid: 'r-2', method: 'POST', path: '/ünï\u0000\u001f\ud800/\\x', status: 502, bytesIn: 12, bytesOut: 0, latencyMs: 0.125, service: 's.ns', user: 'u\t', session: 's-1', decision: 'DENY', reason: shared, config: 'c', upstream: 'http://[::1]:8080', retries: 2, error: 'ECONNREFUSED "x"\nline' };
    for (let i = 0; i < 2; i++) assert.equal(`{${accessLogMembers(full)}}`, JSON.stringify(full));
    const celError = { ...full, reason: { type: 'CEL_ERROR', detail: 'no such key: "x"' }, retries: undefined, latencyMs: Number.NaN };
    assert.equal(`{${accessLogMembers(celError)}}`, JSON.stringify(celError));
    const bare: AccessLogEntry = { type: 'access', rid: 'r-3', method: '', path: '', status: 400, bytesIn: 0, bytesOut: 0, latencyMs: 0, error: 'bad' };
    assert.equal(`{${accessLogMembers(bare)}}`, JSON.stringify(bare));
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
