import assert from 'node:assert/strict';
import { connect } from 'node:http2';
import { createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import { extProcProtocol as ep } from '@postern/proxy';
import { RecordingUpstream, send, startTestCluster, type TestCluster } from '../harness/index.js';

type Msg = ep.ProcessingRequest;
type Reply = ep.ProcessingResponse;

/** A header's value in a message the gateway sent (Envoy puts it in raw_value). */
function header(hm: ep.HttpHeaders | undefined, key: string): string | undefined {
  const h = hm?.headers?.headers.find((x) => x.key === key);
  return h ? Buffer.from(h.rawValue).toString('latin1') : undefined;
}

const set = (key: string, value: string, append?: boolean): ep.HeaderValueOption => ({
  header: { key, value: '', rawValue: Buffer.from(value) },
  append: append === undefined ? undefined : { value: append },
  appendAction: ep.HeaderValueOption_HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD,
  keepEmptyValue: false,
});
const common = (c: Partial<ep.CommonResponse>): ep.CommonResponse => ({ status: ep.CommonResponse_ResponseStatus.CONTINUE, headerMutation: undefined, bodyMutation: undefined, clearRouteCache: false, ...c });
const mutation = (setHeaders: ep.HeaderValueOption[], removeHeaders: string[] = []): ep.HeaderMutation => ({ setHeaders, removeHeaders });

/**
 * A real ext_proc server (gRPC over HTTP/2, Envoy's protocol) whose behaviour the request path
 * picks: what it does on each message is written below, once, and every stream is recorded.
 */
class Processor {
  readonly streams: { path: string; messages: Msg[]; ended: boolean }[] = [];
  private readonly server = new Server();
  port = 0;

  async start(): Promise<void> {
    this.server.addService(ep.ExternalProcessorService, { process: (call: ServerDuplexStream<Msg, Reply>) => this.process(call) });
    this.port = await new Promise<number>((resolve, reject) => this.server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))));
  }

  private process(call: ServerDuplexStream<Msg, Reply>): void {
    const rec = { path: '', messages: [] as Msg[], ended: false };
    this.streams.push(rec);
    call.on('error', () => {});
    call.on('end', () => {
      rec.ended = true;
      call.end();
    });
    call.on('data', (m: Msg) => {
      rec.messages.push(m);
      rec.path ||= header(m.requestHeaders, ':path') ?? header(m.responseHeaders, 'x-path') ?? '';
      const reply = this.behave(rec.path, m);
      if (reply === 'close') call.end();
      else if (reply !== 'silence') call.write({ ...reply });
    });
  }

  private behave(path: string, m: Msg): Partial<Reply> | 'close' | 'silence' {
    if (path.startsWith('/bye')) return 'close';
    if (path.startsWith('/slow')) return 'silence';
    if (path.startsWith('/block')) {
      return { immediateResponse: { status: { code: 451 }, headers: mutation([set('x-blocked-by', 'processor')]), body: Buffer.from('blocked by processor'), grpcStatus: undefined, details: 'test' } };
    }
    if (path.startsWith('/withhold') && m.responseHeaders) {
      return { immediateResponse: { status: { code: 409 }, headers: undefined, body: Buffer.from('withheld by processor'), grpcStatus: undefined, details: '' } };
    }
    if (path.startsWith('/evil')) return { requestHeaders: { response: common({ headerMutation: mutation([set('x-split', 'a\r\nb')]) }) } };
    if (m.requestHeaders) {
      const tier = header(m.requestHeaders, 'x-want-gold') ? [set('x-tier', 'gold')] : [];
      const who = header(m.requestHeaders, 'x-postern-user') ?? 'nobody';
      // Tries to pass as another user and to change the path; both must be ignored.
      return { requestHeaders: { response: common({ headerMutation: mutation([...tier, set('x-enriched', who), set('x-postern-user', 'mallory'), set(':path', '/admin'), set('x-multi', 'two', true)], ['x-remove-me']) }) } };
    }
    if (m.requestBody) {
      const doc = JSON.parse(Buffer.from(m.requestBody.body).toString()) as Record<string, unknown>;
      delete doc.card;
      return { requestBody: { response: common({ bodyMutation: { body: Buffer.from(JSON.stringify(doc)) } }) } };
    }
    if (m.responseHeaders) return { responseHeaders: { response: common({ headerMutation: mutation([set('x-processed', 'yes'), set(':status', '203')], ['x-internal']) }) } };
    if (m.responseBody) return { responseBody: { response: common({ bodyMutation: { body: Buffer.from(Buffer.from(m.responseBody.body).toString().toUpperCase()) } }) } };
    return 'close';
  }

  last(): { path: string; messages: Msg[]; ended: boolean } {
    return this.streams.at(-1)!;
  }

  async stop(): Promise<void> {
    this.server.forceShutdown();
  }
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** extProc plugins: Envoy's external processing protocol against a real gRPC processor. */
describe('proxy ext_proc plugins', () => {
  let tc: TestCluster;
  let up: RecordingUpstream;
  const proc = new Processor();
  const from = '127.0.80.3';
  const ports: Record<string, number> = {};
  let token = '';
  const logLines: string[] = [];
  /** The access-log error for a request ID (the answer itself never carries it). */
  const logged = (body: string) => {
    const rid = /request id: (\S+)/.exec(body)?.[1];
    return logLines.map((l) => JSON.parse(l) as { rid?: string; error?: string }).find((l) => rid && l.rid === rid)?.error ?? '';
  };
  before(async () => {
    await proc.start();
    up = await RecordingUpstream.start(0, 'ep');
    tc = await startTestCluster({ logLines });
    await tc.login('root');
    const allow = `  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {matchAny: true}}]}}]}`;
    const svc = (name: string, plugin: string, authorization = allow) =>
      `kind: Service\nmetadata: {name: ${name}}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:${up.port}"}\n    http:\n      plugins:\n${plugin}\n${authorization}`;
    const at = `127.0.0.1:${proc.port}`;
    const yaml = [
      'kind: User\nmetadata: {name: pat}\nspec: {type: HUMAN}',
      svc('headers', `        - name: enrich\n          extProc: {address: "${at}", timeout: {milliseconds: 300}}`),
      svc('pub', `        - name: enrich\n          phase: PRE_AUTH\n          extProc: {address: "${at}"}`).replace('spec:\n', 'spec:\n  isPublic: true\n'),
      svc('redact', `        - name: redact\n          extProc: {address: "grpc://${at}", requestMode: BODY, responseMode: NONE}`),
      svc('shout', `        - name: shout\n          extProc: {address: "${at}", requestMode: NONE, responseMode: BODY}`),
      svc('down', `        - name: gone\n          extProc: {address: "127.0.0.1:${await closedPort()}"}`),
      // The policy wants a header only the PRE_AUTH processor adds.
      svc('tiered', `        - name: tier\n          phase: PRE_AUTH\n          extProc: {address: "${at}", responseMode: NONE}`, `  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {match: 'ctx.request.http.headers["x-tier"] == "gold"'}}]}}]}`),
      svc('lua-tiered', `        - name: tier\n          phase: PRE_AUTH\n          lua:\n            inline: |\n              function onRequest(ctx)\n                if ctx.request.http.path == "/gold" then octelium.req.setRequestHeader("x-tier", "gold") end\n              end`, `  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {match: 'ctx.request.http.headers["x-tier"] == "gold"'}}]}}]}`),
    ].join('\n---\n');
    const r = await tc.cli('posternctl', ['apply', '-'], { stdin: yaml });
    assert.equal(r.code, 0, r.err);
    for (const n of ['headers', 'redact', 'shout', 'down', 'tiered', 'lua-tiered']) ports[n] = await tc.cluster.proxy!.listenService(`${n}.default`, '127.0.0.1', 0);
    token = (await tc.connectedSession('pat', from)).accessToken;
  });
  after(async () => {
    await tc?.stop();
    await up?.stop();
    await proc.stop();
  });

  it('lets the processor change request and response headers, but not identity, path or framing', async () => {
    const r = await send({ port: ports.headers!, from, path: '/enrich/a/../b?q=1', headers: { 'x-remove-me': 'x', 'x-multi': 'one' } });
    assert.equal(r.status, 203, logged(r.body));
    const seen = up.last()!;
    assert.equal(seen.url, '/enrich/b?q=1', 'the normalised path, not the processor\'s /admin');
    assert.equal(seen.headers['x-enriched'], 'pat', 'the processor saw the identity headers');
    assert.equal(seen.headers['x-postern-user'], 'pat');
    assert.equal(seen.headers['x-remove-me'], undefined);
    assert.equal(seen.headers['x-multi'], 'one, two', 'append: true appends');
    assert.deepEqual([r.headers['x-processed'], r.headers['x-internal']], ['yes', undefined]);
    assert.ok(r.headers['x-postern-request-id']);
    const s = proc.last();
    assert.deepEqual(['requestHeaders', 'responseHeaders'].map((k) => s.messages.some((m) => (m as unknown as Record<string, unknown>)[k])), [true, true]);
    const first = s.messages[0]!;
    assert.deepEqual([header(first.requestHeaders, ':method'), header(first.requestHeaders, ':path'), first.requestHeaders!.endOfStream], ['GET', '/enrich/b?q=1', true]);
    assert.equal(first.protocolConfig?.requestBodyMode, ep.BodySendMode.NONE);
    assert.equal(s.messages[1]!.protocolConfig, undefined, 'the protocol configuration goes in the first message only');
    assert.equal(header(s.messages[1]!.responseHeaders, ':status'), '200');
  });

  it('works the same in PRE_AUTH for HTTP/2 on the public HTTPS listener, where pseudo-headers are headers', async () => {
    const session = connect(`https://127.0.0.1:${tc.cluster.publicAddress!.split(':').at(-1)}`, { ca: tc.cluster.caPem!, servername: `pub.${tc.domain}` });
    try {
      const r = await new Promise<{ status: number; headers: Record<string, unknown> }>((resolve, reject) => {
        const req = session.request({ ':path': '/enrich/h2', ':authority': `pub.${tc.domain}`, authorization: `Bearer ${token}` });
        req.on('response', (headers) => {
          req.resume();
          req.on('end', () => resolve({ status: Number(headers[':status']), headers }));
        });
        req.on('error', reject);
        req.end();
      });
      assert.equal(r.status, 203);
      assert.equal(r.headers['x-processed'], 'yes');
    } finally {
      session.close();
    }
    assert.equal(up.last()!.headers['x-enriched'], 'nobody', 'before the decision, no identity headers yet');
    assert.equal(up.last()!.headers['x-postern-user'], 'pat');
    const keys = proc.last().messages[0]!.requestHeaders!.headers!.headers.map((h) => h.key);
    assert.deepEqual(keys.filter((k) => k.startsWith(':')), [':method', ':path', ':authority', ':scheme'], 'each pseudo-header once');
    assert.equal(header(proc.last().messages[0]!.requestHeaders, ':scheme'), 'https');
  });

  it('sends the buffered request body and forwards the body the processor returns', async () => {
    const r = await send({ port: ports.redact!, from, method: 'POST', path: '/pay', body: '{"amount":5,"card":"4111111111111111"}', headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 200, r.body);
    const seen = up.last()!;
    assert.equal(seen.body, '{"amount":5}');
    assert.equal(seen.headers['content-length'], '12');
    const s = proc.last();
    assert.equal(s.messages.length, 2, 'headers and body; no response messages (responseMode NONE)');
    assert.equal(s.messages[0]!.requestHeaders!.endOfStream, false);
    assert.equal(s.messages[0]!.protocolConfig?.requestBodyMode, ep.BodySendMode.BUFFERED);
    assert.equal(Buffer.from(s.messages[1]!.requestBody!.body).toString(), '{"amount":5,"card":"4111111111111111"}');
  });

  it('sends the upstream response body and returns the body the processor makes of it', async () => {
    const r = await send({ port: ports.shout!, from, path: '/loud' });
    assert.equal(r.status, 203);
    assert.equal(r.body, r.body.toUpperCase());
    assert.match(r.body, /"UPSTREAM":"EP"/);
    assert.equal(r.headers['content-length'], String(Buffer.byteLength(r.body)));
    assert.ok(proc.last().messages.every((m) => !m.requestHeaders), 'requestMode NONE sends nothing of the request');
  });

  it('answers with the processor\'s immediate response, and nothing reaches the upstream', async () => {
    const before = up.seen.length;
    const r = await send({ port: ports.headers!, from, path: '/block/x' });
    assert.deepEqual([r.status, r.body, r.headers['x-blocked-by']], [451, 'blocked by processor', 'processor']);
    assert.equal(up.seen.length, before);
  });

  it('answers with an immediate response given on the response side instead of the upstream\'s', async () => {
    const before = up.seen.length;
    const r = await send({ port: ports.headers!, from, path: '/withhold' });
    assert.deepEqual([r.status, r.body], [409, 'withheld by processor']);
    assert.equal(up.seen.length, before + 1, 'the upstream answered; its answer was withheld');
    assert.doesNotMatch(r.body, /upstream/);
    assert.equal((await send({ port: ports.headers!, from, path: '/next' })).status, 203, 'the upstream connection is still usable');
  });

  it('carries on without a processor that closes the stream cleanly', async () => {
    const r = await send({ port: ports.headers!, from, path: '/bye' });
    assert.equal(r.status, 200, r.body);
    assert.equal(up.last()!.url, '/bye');
    assert.equal(up.last()!.headers['x-enriched'], undefined);
  });

  it('fails closed: 504 when the processor is silent, 500 when unreachable or it sends a header that would split the request', async () => {
    const before = up.seen.length;
    const t0 = Date.now();
    const slow = await send({ port: ports.headers!, from, path: '/slow' });
    assert.equal(slow.status, 504, slow.body);
    assert.ok(Date.now() - t0 < 3000, 'the plugin timeout (300 ms) applied');
    assert.match(logged(slow.body), /plugin enrich: the external processor sent no answer within 300 ms/, 'the reason is in the access log');
    const evil = await send({ port: ports.headers!, from, path: '/evil' });
    assert.equal(evil.status, 500, evil.body);
    assert.doesNotMatch(evil.body, /x-split|processor sent/, 'no internals in the answer');
    assert.match(logged(evil.body), /an invalid header \("x-split"\)/);
    const down = await send({ port: ports.down!, from, path: '/x' });
    assert.equal(down.status, 500, down.body);
    assert.equal(up.seen.length, before, 'none reached the upstream');
    assert.equal((await send({ port: ports.headers!, from, path: '/after' })).status, 203, 'and the gateway keeps serving');
  });

  it('runs PRE_AUTH processors and Lua before the decision: the policy sees the headers they set', async () => {
    assert.equal((await send({ port: ports.tiered!, from, path: '/x' })).status, 403);
    const gold = await send({ port: ports.tiered!, from, path: '/x', headers: { 'x-want-gold': '1' } });
    assert.equal(gold.status, 200, gold.body);
    assert.equal(up.last()!.headers['x-tier'], 'gold', 'and the upstream receives them');
    assert.equal((await send({ port: ports['lua-tiered']!, from, path: '/x' })).status, 403);
    assert.equal((await send({ port: ports['lua-tiered']!, from, path: '/gold' })).status, 200);
    assert.equal(up.last()!.headers['x-tier'], 'gold');
  });

  it('ends every stream it opened', async () => {
    await new Promise((r) => setTimeout(r, 200));
    // Not these: the gateway cancels a processor that failed (/slow, /evil), and /bye closed its own.
    const open = proc.streams.filter((s) => !s.ended && !s.path.startsWith('/slow') && !s.path.startsWith('/bye') && !s.path.startsWith('/evil'));
    assert.deepEqual(open.map((s) => s.path), []);
  });
});
