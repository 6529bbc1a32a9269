import assert from 'node:assert/strict';
import { connect as http2Connect } from 'node:http2';
import { connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { RecordingUpstream, send, startTestCluster, type TestCluster } from '../harness/index.js';

/** Sends raw bytes and returns whatever comes back before the server closes or 2 s pass. */
function raw(port: number, from: string, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: from });
    let out = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(out);
    }, 2000);
    s.on('data', (d: Buffer) => (out += d.toString()));
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.on('error', reject);
    s.write(bytes);
  });
}

const statusOf = (response: string) => Number(response.match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? 0);

/**
 * Attack cases: each asserts what the upstream did or did not receive. The Service allows
 * everything except paths under /admin, so any normalisation gap would show up as a forwarded
 * /admin request.
 */
describe('proxy hardening', () => {
  let tc: TestCluster;
  let up: RecordingUpstream;
  let port: number;
  let token = '';
  const from = '127.0.60.2';
  const logLines: string[] = [];

  before(async () => {
    up = await RecordingUpstream.start(0, 'guarded');
    tc = await startTestCluster({ logLines });
    await tc.login('root');
    const yaml = `kind: Group
metadata: {name: staff}
---
kind: User
metadata: {name: mallory}
spec: {type: HUMAN, groups: [staff]}
---
kind: Service
metadata: {name: guarded}
spec:
  config:
    upstream: {url: "http://127.0.0.1:${up.port}"}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - name: no-admin
              effect: DENY
              condition: {match: 'ctx.request.http.path.startsWith("/admin")'}
            - effect: ALLOW
              condition: {match: '"staff" in ctx.user.spec.groups'}
---
kind: Policy
metadata: {name: staff-only}
spec:
  rules:
    - effect: ALLOW
      condition: {match: '"staff" in ctx.user.spec.groups'}
---
kind: Service
metadata: {name: open}
spec:
  isPublic: true
  config:
    upstream: {url: "http://127.0.0.1:${up.port}"}
  authorization: {policies: [staff-only]}
---
kind: Service
metadata: {name: open-pass}
spec:
  isPublic: true
  config:
    upstream: {url: "http://127.0.0.1:${up.port}"}
    http: {header: {authorizationMode: PASS}}
  authorization: {policies: [staff-only]}
`;
    const r = await tc.cli('posternctl', ['apply', '-'], { stdin: yaml });
    assert.equal(r.code, 0, r.err);
    port = await tc.cluster.proxy!.listenService('guarded.default', '127.0.0.1', 0);
    token = (await tc.connectedSession('mallory', from)).accessToken;
  });
  after(async () => {
    await tc?.stop();
    await up?.stop();
  });

  /** One HTTP/2 GET of /x on the public HTTPS listener, as `<svc>.<domain>`: the status. */
  async function h2get(svc: string, headers: Record<string, string>): Promise<number> {
    const session = http2Connect(`https://127.0.0.1:${tc.cluster.publicAddress!.split(':').at(-1)}`, { ca: tc.cluster.caPem!, servername: `${svc}.${tc.domain}` });
    try {
      return await new Promise<number>((resolve, reject) => {
        const req = session.request({ ':path': '/x', ':authority': `${svc}.${tc.domain}`, ...headers });
        req.on('response', (h) => {
          req.resume();
          req.on('end', () => resolve(Number(h[':status'])));
        });
        req.on('error', reject);
        req.end();
      });
    } finally {
      session.close();
    }
  }

  describe('path normalisation happens before policy, and is what the upstream gets', () => {
    for (const path of ['/public/../admin', '/%2e%2e/admin', '/public/%2E%2E/admin', '/public%2f..%2fadmin', '//admin', '/./admin', '/public/..%2Fadmin', '/a/b/../../admin/x', '/%61dmin']) {
      it(`denies ${path} and forwards nothing`, async () => {
        const before = up.seen.length;
        const r = await raw(port, from, `GET ${path} HTTP/1.1\r\nHost: guarded\r\nConnection: close\r\n\r\n`);
        assert.equal(statusOf(r), 403, r);
        assert.equal(up.seen.length, before);
      });
    }
    it('forwards the normalised path', async () => {
      const r = await raw(port, from, 'GET /docs/./a//b/../c%7e?q=%2e%2e HTTP/1.1\r\nHost: guarded\r\nConnection: close\r\n\r\n');
      assert.equal(statusOf(r), 200, r);
      assert.equal(up.last()!.url, '/docs/a/c~?q=%2e%2e');
    });
    it('forwards path parameters that do not make a dot segment, as they came', async () => {
      const r = await raw(port, from, 'GET /docs;jsessionid=1/a HTTP/1.1\r\nHost: guarded\r\nConnection: close\r\n\r\n');
      assert.equal(statusOf(r), 200, r);
      assert.equal(up.last()!.url, '/docs;jsessionid=1/a');
    });
    // `..;` is `..` to Tomcat, Jetty and Spring behind the proxy: /admin to them, /public/… to a policy.
    for (const path of ['/a%00b', '/a%zz', '/a\\..\\admin', '/x%5c..%5cadmin', '/public/..;/admin', '/public/%2e%2e;x=1/admin']) {
      it(`rejects ${JSON.stringify(path)} with 400`, async () => {
        const before = up.seen.length;
        const r = await raw(port, from, `GET ${path} HTTP/1.1\r\nHost: guarded\r\nConnection: close\r\n\r\n`);
        assert.equal(statusOf(r), 400, r);
        assert.equal(up.seen.length, before);
      });
    }
  });

  describe('the host a request names is the one it is routed by', () => {
    it('refuses an absolute-form target that names another host than Host', async () => {
      const before = up.seen.length;
      const r = await raw(port, from, 'GET http://admin.internal/admin HTTP/1.1\r\nHost: guarded\r\nConnection: close\r\n\r\n');
      assert.equal(statusOf(r), 400, r);
      assert.equal(up.seen.length, before);
      const ok = await raw(port, from, 'GET http://guarded/docs HTTP/1.1\r\nHost: guarded\r\nConnection: close\r\n\r\n');
      assert.equal(statusOf(ok), 200, ok);
      assert.equal(up.last()!.url, '/docs', 'origin form upstream');
    });

    it('refuses the same on the public HTTPS listener over HTTP/1.1 (Node\'s parser there)', async () => {
      const https = (request: string) =>
        new Promise<string>((resolve, reject) => {
          const s = tlsConnect({ host: '127.0.0.1', port: Number(tc.cluster.publicAddress!.split(':').at(-1)), ca: tc.cluster.caPem!, servername: `open.${tc.domain}`, ALPNProtocols: ['http/1.1'] });
          let out = '';
          s.on('data', (d: Buffer) => (out += d.toString('latin1')));
          s.on('end', () => resolve(out));
          s.on('error', reject);
          s.write(request);
        });
      const before = up.seen.length;
      const bad = await https(`GET http://guarded.${tc.domain}/admin HTTP/1.1\r\nHost: open.${tc.domain}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(bad), 400, bad);
      assert.equal(up.seen.length, before);
      const ok = await https(`GET https://open.${tc.domain}/y HTTP/1.1\r\nHost: open.${tc.domain}\r\nAuthorization: Bearer ${token}\r\nConnection: close\r\n\r\n`);
      assert.equal(statusOf(ok), 200, ok);
      assert.equal(up.last()!.url, '/y');
    });

    it('refuses HTTP/2 whose Host names another Service than :authority', async () => {
      const before = up.seen.length;
      assert.equal(await h2get('open', { host: `guarded.${tc.domain}`, authorization: `Bearer ${token}` }), 400);
      assert.equal(up.seen.length, before, 'nothing forwarded');
      assert.equal(await h2get('open', { host: `OPEN.${tc.domain}`, authorization: `Bearer ${token}` }), 200, 'the same host in another case is the same host');
      assert.equal(await h2get('open', { authorization: `Bearer ${token}` }), 200);
    });

    it('answers a malformed postern_auth cookie with 401, not a gateway failure', async () => {
      assert.equal(await h2get('open', { cookie: 'postern_auth=%E0%A4%A' }), 401);
      assert.equal(await h2get('open', { cookie: `a=1; postern_auth=${encodeURIComponent(token)}` }), 200);
    });
  });

  describe('the gateway\'s access token never reaches an upstream', () => {
    it('not even with authorizationMode PASS, when it is the Authorization the caller was identified by', async () => {
      assert.equal(await h2get('open-pass', { authorization: `Bearer ${token}` }), 200);
      assert.equal(up.last()!.headers.authorization, undefined);
      assert.equal(up.last()!.headers['x-postern-user'], 'mallory');
    });
    it('while PASS still passes the caller\'s own Authorization for the app, identity coming from x-postern-auth', async () => {
      assert.equal(await h2get('open-pass', { 'x-postern-auth': token, authorization: 'Bearer app-token' }), 200);
      assert.equal(up.last()!.headers.authorization, 'Bearer app-token');
      assert.equal(up.last()!.headers['x-postern-auth'], undefined);
    });
  });

  describe('request smuggling is refused with 400 and never forwarded', () => {
    const cases: [string, string][] = [
      ['Content-Length with Transfer-Encoding', 'POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: g\r\n\r\n'],
      ['two different Content-Lengths', 'POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello'],
      ['two equal Content-Lengths', 'POST /x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello'],
      ['a bad chunk size', 'POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n'],
      ['Transfer-Encoding other than chunked', 'POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n'],
      ['obfuscated Transfer-Encoding', 'POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n'],
      ['a bare LF inside a header value', 'GET /x HTTP/1.1\r\nHost: g\r\nX-A: one\nX-B: two\r\n\r\n'],
      ['a CR inside a header value', 'GET /x HTTP/1.1\r\nHost: g\r\nX-A: one\rX-B: two\r\n\r\n'],
      ['an obs-fold continuation line', 'GET /x HTTP/1.1\r\nHost: g\r\nX-A: one\r\n two\r\n\r\n'],
    ];
    for (const [name, bytes] of cases) {
      it(name, async () => {
        const before = up.seen.length;
        const r = await raw(port, from, bytes);
        assert.equal(statusOf(r), 400, r);
        assert.match(r, /x-postern-request-id: [0-9a-f-]{36}/i);
        assert.equal(up.seen.length, before, `forwarded: ${JSON.stringify(up.seen.slice(before))}`);
      });
    }
  });

  it('strips hop-by-hop headers and sets x-forwarded-* and identity itself', async () => {
    const r = await send({
      port,
      from,
      path: '/h',
      headers: {
        connection: 'keep-alive, x-hop-secret',
        'x-hop-secret': '1',
        'keep-alive': 'timeout=5',
        'proxy-authorization': 'Basic eDp5',
        te: 'trailers',
        'x-forwarded-for': '6.6.6.6',
        'x-forwarded-host': 'evil.example',
        forwarded: 'for=6.6.6.6',
        'x-real-ip': '6.6.6.6',
        'x-postern-user': 'root',
        'x-postern-groups': 'ops',
        'x-postern-request-id': 'chosen-by-the-caller',
      },
    });
    assert.equal(r.status, 200, r.body);
    const h = up.last()!.headers;
    for (const name of ['x-hop-secret', 'keep-alive', 'proxy-authorization', 'te', 'forwarded']) assert.equal(h[name], undefined, name);
    assert.equal(h['x-forwarded-for'], from);
    assert.equal(h['x-real-ip'], from);
    assert.equal(h['x-forwarded-proto'], 'http');
    assert.equal(h['x-postern-user'], 'mallory');
    assert.equal(h['x-postern-groups'], 'staff');
    // The request ID the caller is given is the one the upstream receives, whatever the caller sent.
    const rid = r.headers['x-postern-request-id'];
    assert.match(String(rid), /^[0-9a-f-]{36}$/);
    assert.equal(h['x-postern-request-id'], rid);
  });

  it('logs one JSON line per request with the decision and reason, and no token', async () => {
    logLines.length = 0;
    await send({ port, from, path: '/admin/users' });
    await send({ port, from, path: '/ok' });
    const access = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.type === 'access');
    assert.equal(access.length, 2);
    const [denied, allowed] = access as [Record<string, any>, Record<string, any>];
    assert.equal(denied.status, 403);
    assert.equal(denied.decision, 'DENY');
    assert.equal(denied.reason.rule, 'no-admin');
    assert.equal(denied.service, 'guarded.default');
    assert.equal(denied.user, 'mallory');
    assert.equal(denied.path, '/admin/users');
    assert.equal(allowed.status, 200);
    assert.equal(allowed.decision, 'ALLOW');
    assert.equal(allowed.config, 'default');
    for (const key of ['rid', 'session', 'method', 'bytesIn', 'bytesOut', 'latencyMs', 'upstream', 'time']) assert.ok(key in allowed, key);
    assert.ok(!logLines.join('').includes('eyJ'), 'no token in the log');
  });
});
