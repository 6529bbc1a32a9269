import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { WebSocket, WebSocketServer } from 'ws';
import { RecordingUpstream, send, startTestCluster, type TestCluster } from '../harness/index.js';

/**
 * Streaming, upgrades, load balancing with passive health, upstream errors and timeouts, and every
 * kind of secretless upstream credential — against real servers.
 */
describe('proxy: streaming, upgrades, balancing and upstream credentials', () => {
  let tc: TestCluster;
  const from = '127.0.70.2';
  const ports: Record<string, number> = {};
  const ups: Record<string, RecordingUpstream> = {};
  let wss: WebSocketServer;
  let sink: Server;
  let wsPort: number;
  let tokenCalls = 0;

  before(async () => {
    ups.sse = await RecordingUpstream.start(0, 'sse', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.write('data: first\n\n');
      // The second event comes only after the client has seen the first.
      setTimeout(() => res.end('data: second\n\n'), 400);
    });
    // Hashes the upload as it arrives, so it answers as soon as the last byte is in: the cluster's
    // 500 ms upstream timeout (for the 504 test) runs from that byte. (Buffering 64 MiB as a
    // string and hashing it then took over 500 ms on a CI machine busy with other tests: a 504.)
    sink = createServer((req, res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      req.on('data', (c: Buffer) => (hash.update(c), (bytes += c.length)));
      req.on('end', () => res.end(JSON.stringify({ bytes, sha: hash.digest('hex') })));
    });
    await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
    ups.a = await RecordingUpstream.start(0, 'a');
    ups.b = await RecordingUpstream.start(0, 'b');
    ups.slow = await RecordingUpstream.start(0, 'slow', () => {
      /* never answers */
    });
    ups.creds = await RecordingUpstream.start(0, 'creds');
    ups.oauth = await RecordingUpstream.start(0, 'oauth', (req, res, body) => {
      tokenCalls++;
      const ok = req.headers.authorization === `Basic ${Buffer.from('client-1:oauth-secret').toString('base64')}` && body.includes('grant_type=client_credentials');
      setTimeout(() => {
        res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
        res.end(JSON.stringify(ok ? { access_token: `tok-${tokenCalls}`, expires_in: 3600 } : { error: 'invalid_client' }));
      }, 100);
    });
    wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await new Promise((r) => wss.once('listening', r));
    wsPort = (wss.address() as { port: number }).port;
    wss.on('connection', (sock, req) => {
      sock.send(`hello ${String(req.headers['x-postern-user'])} at ${String(req.url)}`);
      sock.on('message', (m) => sock.send(`echo ${m.toString()}`));
    });

    tc = await startTestCluster({ upstreamTimeoutMs: 500 });
    await tc.login('root');
    const u = (name: string) => `http://127.0.0.1:${name === 'sink' ? (sink.address() as { port: number }).port : ups[name]!.port}`;
    const svc = (name: string, config: string) => `---\nkind: Service\nmetadata: {name: ${name}}\nspec:\n  config:\n${config}\n  authorization: {policies: [allow-all]}\n`;
    const yaml = [
      'kind: Policy\nmetadata: {name: allow-all}\nspec: {rules: [{effect: ALLOW, condition: {matchAny: true}}]}',
      'kind: User\nmetadata: {name: sam}\nspec: {type: HUMAN, email: sam@example.test}',
      'kind: Secret\nmetadata: {name: basic-pw}\nspec: {data: {value: "pa:ss"}}',
      'kind: Secret\nmetadata: {name: api-key}\nspec: {data: {value: "key-123"}}',
      'kind: Secret\nmetadata: {name: oauth-secret}\nspec: {data: {value: "oauth-secret"}}',
      'kind: Secret\nmetadata: {name: aws-secret}\nspec: {data: {value: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}}',
      svc('sse', `    upstream: {url: "${u('sse')}"}`),
      svc('sink', `    upstream: {url: "${u('sink')}"}`),
      svc('lb', `    upstream:\n      loadbalance:\n        endpoints: [{url: "${u('a')}"}, {url: "${u('b')}"}]`),
      svc('slow', `    upstream: {url: "${u('slow')}"}`),
      svc('down', '    upstream: {url: "http://127.0.0.1:1"}'),
      svc('ws', `    upstream: {url: "http://127.0.0.1:${wsPort}"}`),
      svc('wsp', `    upstream: {url: "http://127.0.0.1:${wsPort}/base/"}`),
      svc('basic', `    upstream: {url: "${u('creds')}"}\n    http: {auth: {basic: {username: svc-user, password: {fromSecret: basic-pw}}}}`),
      svc('custom', `    upstream: {url: "${u('creds')}"}\n    http: {auth: {custom: {header: X-Api-Key, value: {fromSecret: api-key}}}}`),
      svc('oauth', `    upstream: {url: "${u('creds')}"}\n    http: {auth: {oauth2ClientCredentials: {tokenURL: "${u('oauth')}/token", clientID: client-1, clientSecret: {fromSecret: oauth-secret}, scopes: [read]}}}`),
      svc('sigv4', `    upstream: {url: "${u('creds')}"}\n    http: {auth: {sigv4: {accessKeyID: AKIDEXAMPLE, secretAccessKey: {fromSecret: aws-secret}, region: eu-west-1, service: execute-api}}}`),
      svc('pass', `    upstream: {url: "${u('creds')}"}\n    http: {header: {authorizationMode: PASS, addResponseHeaders: [{key: x-served-by, value: postern}]}}`),
    ].join('\n---\n');
    const r = await tc.cli('posternctl', ['apply', '-'], { stdin: yaml });
    assert.equal(r.code, 0, r.err);
    for (const name of ['sse', 'sink', 'lb', 'slow', 'down', 'ws', 'wsp', 'basic', 'custom', 'oauth', 'sigv4', 'pass']) ports[name] = await tc.cluster.proxy!.listenService(`${name}.default`, '127.0.0.1', 0);
    await tc.connectedSession('sam', from);
  });
  after(async () => {
    await tc?.stop();
    wss?.close();
    sink?.closeAllConnections();
    sink?.close();
    for (const u of Object.values(ups)) await u.stop();
  });

  it('streams server-sent events: the first event arrives before the upstream finishes', async () => {
    const started = Date.now();
    const firstAt = await new Promise<number>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: ports.sse, path: '/events', localAddress: from, agent: false }, (res) => {
        assert.equal(res.headers['content-type'], 'text/event-stream');
        res.once('data', (d: Buffer) => {
          assert.match(d.toString(), /data: first/);
          resolve(Date.now() - started);
          res.resume();
        });
      });
      req.on('error', reject);
      req.end();
    });
    assert.ok(firstAt < 350, `first event after ${firstAt} ms`);
  });

  it('streams a 64 MiB upload without buffering it, byte for byte', async () => {
    const chunk = Buffer.alloc(1024 * 1024, 7);
    const hash = createHash('sha256');
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: ports.sink, method: 'POST', path: '/upload', localAddress: from, agent: false, headers: { 'transfer-encoding': 'chunked' } }, (r) => {
        let body = '';
        r.on('data', (d: Buffer) => (body += d.toString()));
        r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
      });
      req.on('error', reject);
      let sent = 0;
      const pump = () => {
        while (sent < 64) {
          hash.update(chunk);
          sent++;
          if (!req.write(chunk)) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
    assert.equal(res.status, 200, res.body);
    const got = JSON.parse(res.body) as { bytes: number; sha: string };
    assert.equal(got.bytes, 64 * 1024 * 1024);
    assert.equal(got.sha, hash.digest('hex'));
  });

  it('upgrades WebSockets through the proxy, with identity', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${ports.ws}/socket`, { localAddress: from });
    const messages: string[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.on('message', (m) => {
        messages.push(m.toString());
        if (messages.length === 1) ws.send('ping');
        if (messages.length === 2) resolve();
      });
      ws.on('error', reject);
    });
    ws.close();
    assert.deepEqual(messages, ['hello sam at /socket', 'echo ping']);
  });

  it('upgrades under the upstream URL’s own path, as plain requests are', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${ports.wsp}/socket?x=1`, { localAddress: from });
    const first = await new Promise<string>((resolve, reject) => {
      ws.once('message', (m) => resolve(m.toString()));
      ws.on('error', reject);
    });
    ws.close();
    assert.equal(first, 'hello sam at /base/socket?x=1');
  });

  it('refuses an upgrade from an unknown address before reaching the upstream', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${ports.ws}/socket`, { localAddress: '127.0.70.99' });
    const status = await new Promise<number>((resolve) => ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0)));
    assert.equal(status, 401);
  });

  it('balances round robin and skips an endpoint that failed', async () => {
    const names: string[] = [];
    for (let i = 0; i < 4; i++) names.push((await send({ port: ports.lb!, from })).json<{ upstream: string }>().upstream);
    assert.deepEqual([...new Set(names)].sort(), ['a', 'b']);
    assert.notEqual(names[0], names[1]);
    await ups.b!.stop();
    const after: number[] = [];
    for (let i = 0; i < 6; i++) after.push((await send({ port: ports.lb!, from })).status);
    // At most one request meets the dead endpoint (502); then it is skipped.
    assert.ok(after.filter((s) => s === 502).length <= 1, String(after));
    assert.ok(after.slice(2).every((s) => s === 200), String(after));
  });

  it('answers 502 with a request ID when the upstream is down, 504 when it is too slow', async () => {
    const down = await send({ port: ports.down!, from });
    assert.equal(down.status, 502);
    assert.match(down.body, /request id: /);
    const slow = await send({ port: ports.slow!, from });
    assert.equal(slow.status, 504);
  });

  it('injects basic and custom-header credentials and drops the caller\'s Authorization', async () => {
    await send({ port: ports.basic!, from, headers: { authorization: 'Bearer caller-token' } });
    assert.equal(ups.creds!.last()!.headers.authorization, `Basic ${Buffer.from('svc-user:pa:ss').toString('base64')}`);
    await send({ port: ports.custom!, from, headers: { authorization: 'Bearer caller-token' } });
    assert.equal(ups.creds!.last()!.headers['x-api-key'], 'key-123');
    assert.equal(ups.creds!.last()!.headers.authorization, undefined);
  });

  it('passes the caller\'s Authorization with authorizationMode PASS, and adds response headers', async () => {
    const r = await send({ port: ports.pass!, from, headers: { authorization: 'Bearer caller-token' } });
    assert.equal(ups.creds!.last()!.headers.authorization, 'Bearer caller-token');
    assert.equal(r.headers['x-served-by'], 'postern');
  });

  it('fetches an OAuth2 client-credentials token once for many concurrent requests, and reuses it', async () => {
    tokenCalls = 0;
    const results = await Promise.all(Array.from({ length: 10 }, () => send({ port: ports.oauth!, from })));
    assert.ok(results.every((r) => r.status === 200));
    assert.equal(tokenCalls, 1);
    assert.equal(ups.creds!.last()!.headers.authorization, 'Bearer tok-1');
    await send({ port: ports.oauth!, from });
    assert.equal(tokenCalls, 1, 'cached until shortly before expiry');
    assert.equal(ups.oauth!.last()!.body, 'grant_type=client_credentials&scope=read');
  });

  it('signs requests with AWS SigV4 so the upstream can verify them', async () => {
    await send({ port: ports.sigv4!, from, method: 'GET', path: '/items?b=2&a=1' });
    const seen = ups.creds!.last()!;
    const auth = String(seen.headers.authorization);
    assert.match(auth, /^AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE\/\d{8}\/eu-west-1\/execute-api\/aws4_request, SignedHeaders=[^,]*host[^,]*, Signature=[0-9a-f]{64}$/);
    // Recompute the signature as the service would, from what arrived.
    const signer = new SignatureV4({ credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }, region: 'eu-west-1', service: 'execute-api', sha256: Sha256 });
    const signedHeaders = auth.match(/SignedHeaders=([^,]+)/)![1]!.split(';');
    const headers: Record<string, string> = {};
    for (const h of signedHeaders) headers[h] = String(seen.headers[h]);
    const url = new URL(seen.url, `http://${headers.host}`);
    const amzDate = String(seen.headers['x-amz-date']);
    const again = await signer.sign(
      { method: 'GET', protocol: 'http:', hostname: url.hostname, port: Number(url.port), path: url.pathname, query: Object.fromEntries(url.searchParams), headers },
      { signingDate: new Date(`${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`) },
    );
    assert.equal(again.headers.authorization, auth);
  });
});
