import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { grpcAddress } from '@postern/apis';
import { mutate } from '../src/ext-proc.js';
import { HeaderValueOption_HeaderAppendAction as Action, type HeaderValueOption } from '../src/gen/envoy/service/ext_proc/v3/external_processor.js';

const opt = (key: string, value: string, o: Partial<HeaderValueOption> = {}): HeaderValueOption => ({
  header: { key, value: '', rawValue: Buffer.from(value) },
  append: undefined,
  appendAction: Action.APPEND_IF_EXISTS_OR_ADD,
  keepEmptyValue: false,
  ...o,
});

/** Header mutations as an Envoy ext_proc server means them. */
describe('ext_proc header mutations', () => {
  const run = (setHeaders: HeaderValueOption[], removeHeaders: string[] = [], start: Record<string, string | string[]> = { a: '1', b: '2' }) => {
    const h = { ...start };
    mutate({ setHeaders, removeHeaders }, h, 'test');
    return h;
  };

  it('replaces by default: append_action unset and append unset', () => {
    assert.deepEqual(run([opt('a', 'new'), opt('c', '3')]), { a: 'new', b: '2', c: '3' });
  });

  it('appends with append: true, replaces with append: false', () => {
    assert.deepEqual(run([opt('a', 'more', { append: { value: true } })]).a, ['1', 'more']);
    assert.equal(run([opt('a', 'x', { append: { value: false } })]).a, 'x');
  });

  it('follows append_action: add if absent, overwrite if exists, overwrite or add', () => {
    assert.deepEqual(run([opt('a', 'x', { appendAction: Action.ADD_IF_ABSENT }), opt('c', 'y', { appendAction: Action.ADD_IF_ABSENT })]), { a: '1', b: '2', c: 'y' });
    assert.deepEqual(run([opt('a', 'x', { appendAction: Action.OVERWRITE_IF_EXISTS }), opt('c', 'y', { appendAction: Action.OVERWRITE_IF_EXISTS })]), { a: 'x', b: '2' });
    assert.deepEqual(run([opt('c', 'y', { appendAction: Action.OVERWRITE_IF_EXISTS_OR_ADD })]), { a: '1', b: '2', c: 'y' });
  });

  it('removes first, then sets; names are case-insensitive', () => {
    assert.deepEqual(run([opt('B', 'back')], ['A', 'b']), { b: 'back' });
  });

  it('drops empty values unless keep_empty_value; reads value when raw_value is empty', () => {
    assert.deepEqual(run([opt('c', '')]), { a: '1', b: '2' });
    assert.deepEqual(run([opt('c', '', { keepEmptyValue: true })]).c, '');
    assert.equal(run([{ ...opt('c', ''), header: { key: 'c', value: 'plain', rawValue: Buffer.alloc(0) } }]).c, 'plain');
  });

  it('ignores pseudo-headers, Host, framing and the gateway identity headers', () => {
    const start = { host: 'h', 'content-length': '5', 'x-postern-user': 'pat', a: '1' };
    const out = run([opt(':path', '/admin'), opt('host', 'evil'), opt('content-length', '0'), opt('transfer-encoding', 'chunked'), opt('x-postern-user', 'mallory')], ['x-postern-user', 'host'], start);
    assert.deepEqual(out, start);
  });

  it('refuses names and values that could split a message, naming the plugin', () => {
    assert.throws(() => run([opt('a', 'x\r\ny: z')]), /plugin test: the external processor sent an invalid header \("a"\)/);
    assert.throws(() => run([opt('a b', 'x')]), /invalid header/);
    assert.throws(() => run([], ['bad name']), /invalid header name to remove/);
  });
});

describe('ext_proc addresses', () => {
  it('takes host:port and grpc:// as plaintext, grpcs:// as TLS, and nothing else', () => {
    assert.deepEqual(grpcAddress('ext.internal:9000'), { target: 'ext.internal:9000', tls: false });
    assert.deepEqual(grpcAddress('grpc://10.0.0.5:50051'), { target: '10.0.0.5:50051', tls: false });
    assert.deepEqual(grpcAddress('grpcs://[::1]:443'), { target: '[::1]:443', tls: true });
    for (const bad of ['ext.internal', 'http://x:1', 'x:0', 'x:70000', 'x:1/path', '']) assert.equal(grpcAddress(bad), undefined, bad);
  });
});
