import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:https';
import { after, before, describe, it } from 'node:test';
import { clusterTls } from '@postern/cluster';
import { openStore } from '@postern/store';
import { RecordingUpstream, freePort, send, startTestCluster, type TestCluster } from '../harness/index.js';

/**
 * Route settings of REFERENCE.md beyond the basics, against real upstreams: `http.retry`,
 * `http.cors`, `tls.trustedCAs`, a rate limit keyed by CEL; and the upstream kinds this
 * cluster cannot run refused at apply time.
 */
describe('proxy route settings: retry, CORS, trusted CAs, CEL rate-limit keys', () => {
  let tc: TestCluster;
  let flaky: RecordingUpstream;
  let good: RecordingUpstream;
  let tlsUp: Server;
  let tlsPort = 0;
  let failures = 0;
  const from = '127.0.81.2';
  const ports: Record<string, number> = {};
  const allowAll = '  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {matchAny: true}}]}}]}';

  before(async () => {
    // Answers 503 while `failures` is above zero.
    flaky = await RecordingUpstream.start(0, 'flaky', (_req, res) => {
      if (failures > 0) {
        failures--;
        res.writeHead(503).end('not now');
      } else res.end('flaky recovered');
    });
    good = await RecordingUpstream.start(0, 'good');
    // An HTTPS upstream whose certificate comes from a CA of its own.
    const store = await openStore({});
    const ca = await clusterTls(store, 'upstream.test', ['127.0.0.1'], new Date());
    await store.close();
    tlsUp = createServer({ key: ca.key, cert: ca.cert }, (_req, res) => res.end('over tls'));
    await new Promise<void>((r) => tlsUp.listen(0, '127.0.0.1', r));
    tlsPort = (tlsUp.address() as { port: number }).port;
    const closed = await freePort();
    tc = await startTestCluster();
    await tc.login('root');
    const indentedCa = ca.caPem.trim().split('\n').map((l) => `          ${l}`).join('\n');
    const yaml = [
      'kind: User\nmetadata: {name: pat}\nspec: {type: HUMAN}',
      `kind: Service\nmetadata: {name: retried}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:${flaky.port}"}\n    http:\n      retry: {maxRetries: 2, initialInterval: {milliseconds: 10}, statusCodes: [503]}\n${allowAll}`,
      `kind: Service\nmetadata: {name: failover}\nspec:\n  config:\n    upstream: {loadbalance: {endpoints: [{url: "http://127.0.0.1:${closed}"}, {url: "http://127.0.0.1:${good.port}"}]}}\n    http:\n      retry: {maxRetries: 1, initialInterval: {milliseconds: 10}}\n${allowAll}`,
      `kind: Service\nmetadata: {name: browser}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:${good.port}"}\n    http:\n      cors:\n        allowOriginStringMatch: [{exact: "https://app.example.com"}, {regex: "https://[a-z0-9-]+\\\\.preview\\\\.example\\\\.com"}]\n        allowMethods: "GET, POST"\n        allowHeaders: "content-type, x-trace"\n        exposeHeaders: "x-request-cost"\n        maxAge: "600"\n        allowCredentials: true\n${allowAll}`,
      `kind: Service\nmetadata: {name: private-ca}\nspec:\n  config:\n    upstream: {url: "https://127.0.0.1:${tlsPort}"}\n    tls:\n      trustedCAs:\n        - |\n${indentedCa}\n${allowAll}`,
      `kind: Service\nmetadata: {name: untrusted}\nspec:\n  config:\n    upstream: {url: "https://127.0.0.1:${tlsPort}"}\n${allowAll}`,
      `kind: Service\nmetadata: {name: per-tenant}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:${good.port}"}\n    http:\n      plugins:\n        - name: one-per-tenant\n          rateLimit: {limit: 1, window: {minutes: 1}, key: {eval: 'ctx.request.http.headers["x-tenant"]'}}\n${allowAll}`,
    ].join('\n---\n');
    const r = await tc.cli('posternctl', ['apply', '-'], { stdin: yaml });
    assert.equal(r.code, 0, r.err);
    for (const n of ['retried', 'failover', 'browser', 'private-ca', 'untrusted', 'per-tenant']) ports[n] = await tc.cluster.proxy!.listenService(`${n}.default`, '127.0.0.1', 0);
    await tc.connectedSession('pat', from);
  });

  after(async () => {
    await tc?.stop();
    await flaky?.stop();
    await good?.stop();
    tlsUp?.close();
  });

  it('retries a status the route lists, and gives up after maxRetries', async () => {
    failures = 2;
    const before = flaky.seen.length;
    const ok = await send({ port: ports.retried!, from });
    assert.deepEqual([ok.status, ok.body], [200, 'flaky recovered']);
    assert.equal(flaky.seen.length - before, 3, 'two 503s, then the answer');
    failures = 5;
    const gaveUp = await send({ port: ports.retried!, from });
    assert.equal(gaveUp.status, 503, 'the last answer is passed on');
    assert.equal(flaky.seen.length - before, 6);
    failures = 0;
  });

  it('does not retry a streamed body it could not send again', async () => {
    failures = 1;
    const before = flaky.seen.length;
    const r = await send({ port: ports.retried!, from, method: 'POST', body: 'x'.repeat(1000) });
    assert.equal(r.status, 503);
    assert.equal(flaky.seen.length - before, 1);
    failures = 0;
  });

  it('moves to another endpoint when one cannot be reached', async () => {
    for (let i = 0; i < 4; i++) assert.equal((await send({ port: ports.failover!, from })).status, 200);
  });

  it('answers CORS preflights before identity and without the upstream; decorates responses for allowed origins only', async () => {
    const before = good.seen.length;
    const pre = await send({ port: ports.browser!, from: '127.0.81.99', method: 'OPTIONS', headers: { origin: 'https://feature-x.preview.example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers['access-control-allow-origin'], 'https://feature-x.preview.example.com');
    assert.equal(pre.headers['access-control-allow-methods'], 'GET, POST');
    assert.equal(pre.headers['access-control-allow-headers'], 'content-type, x-trace');
    assert.equal(pre.headers['access-control-max-age'], '600');
    assert.equal(pre.headers['access-control-allow-credentials'], 'true');
    const evil = await send({ port: ports.browser!, from: '127.0.81.99', method: 'OPTIONS', headers: { origin: 'https://evil.example.net', 'access-control-request-method': 'GET' } });
    assert.equal(evil.status, 403);
    assert.equal(evil.headers['access-control-allow-origin'], undefined);
    assert.equal(good.seen.length, before, 'preflights never reach the upstream');
    // A preflight does not open the Service: a plain request from an unknown address is still refused.
    assert.equal((await send({ port: ports.browser!, from: '127.0.81.99', headers: { origin: 'https://app.example.com' } })).status, 401);
    const real = await send({ port: ports.browser!, from, headers: { origin: 'https://app.example.com' } });
    assert.equal(real.status, 200);
    assert.equal(real.headers['access-control-allow-origin'], 'https://app.example.com');
    assert.equal(real.headers['access-control-expose-headers'], 'x-request-cost');
    assert.match(String(real.headers.vary), /Origin/);
    const other = await send({ port: ports.browser!, from, headers: { origin: 'https://evil.example.net' } });
    assert.equal(other.status, 200);
    assert.equal(other.headers['access-control-allow-origin'], undefined);
  });

  it('trusts an upstream certificate from the route\'s trustedCAs, and only then', async () => {
    const ok = await send({ port: ports['private-ca']!, from });
    assert.deepEqual([ok.status, ok.body], [200, 'over tls']);
    const refused = await send({ port: ports.untrusted!, from });
    assert.equal(refused.status, 502);
  });

  it('keys a rate limit by a CEL expression', async () => {
    const go = (tenant: string) => send({ port: ports['per-tenant']!, from, headers: { 'x-tenant': tenant } });
    assert.deepEqual([(await go('a')).status, (await go('a')).status, (await go('b')).status], [200, 429, 200]);
  });

  it('refuses at apply what this cluster cannot run or what does not compile, naming each field', async () => {
    const r = await tc.cli('posternctl', ['apply', '-'], {
      stdin: `kind: Service
metadata: {name: nope}
spec:
  isTLS: true
  config:
    upstream: {container: {image: "nginx:1", port: 80}}
    http:
      plugins:
        - name: bad-key
          rateLimit: {limit: 1, window: {minutes: 1}, key: {eval: 'ctx.request.http.headers[['}}
  dynamicConfig:
    configs:
      - name: by-client
        upstream: {user: alice}
`,
    });
    assert.equal(r.code, 1);
    assert.match(r.err, /spec\.config\.upstream\.container: container upstreams run on Kubernetes.*\[ERR_NOT_IMPLEMENTED\]/);
    assert.match(r.err, /spec\.config\.http\.plugins\[0\]\.rateLimit\.key\.eval: CEL does not compile/);
    assert.match(r.err, /spec\.dynamicConfig\.configs\[0\]\.upstream\.user: upstreams served by a connected client are not implemented yet/);
    assert.match(r.err, /spec\.isTLS: Services served over TLS at their private address are not implemented yet.*\[ERR_NOT_IMPLEMENTED\]/);
    assert.match(r.err, /4 problems found, nothing was changed/);
    const regex = await tc.cli('posternctl', ['apply', '-'], {
      stdin: `kind: Service\nmetadata: {name: nope}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:1"}\n    http:\n      cors: {allowOriginStringMatch: [{regex: "(unclosed"}]}\n`,
    });
    assert.equal(regex.code, 1);
    assert.match(regex.err, /<stdin>:7:\d+: spec\.config\.http\.cors\.allowOriginStringMatch\[0\]\.regex: not a valid regular expression/);
  });
});
