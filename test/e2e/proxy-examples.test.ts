import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { RecordingUpstream, send, startTestCluster, type TestCluster } from '../harness/index.js';

const run = promisify(execFile);
const examples = join(import.meta.dirname, '../../../../shared/examples');

/**
 * Every shared example through the proxy to real upstream servers, for allowed and denied
 * callers, as the comments in the examples say. Private Services are reached on their own
 * listener from a session's tunnel address (a loopback alias here); public ones over HTTPS with
 * an access token.
 */
describe('the shared examples through the proxy', () => {
  let tc: TestCluster;
  const ups = new Map<number, RecordingUpstream>();
  const ports: Record<string, number> = {};
  let pub: number;
  let ca: string;
  const token: Record<string, string> = {};
  const addr = { alice: '127.0.50.2', bob: '127.0.50.3', ci: '127.0.50.4', eve: '127.0.50.5' };

  before(async () => {
    for (const [port, name] of [[9101, 'inventory'], [9201, 'stable'], [9202, 'beta'], [9203, 'preview'], [9301, 'weather'], [9401, 'accounts'], [9501, 'signup']] as const) {
      ups.set(port, await RecordingUpstream.start(port, name));
    }
    tc = await startTestCluster();
    await tc.login('root');
    assert.equal((await tc.cli('posternctl', ['create', 'secret', 'weather-token', '--value', 'sk-example'])).code, 0);
    for (const f of ['01-users-and-policies.yaml', '02-service-basic.yaml', '03-service-dynamic-routing.yaml', '04-service-upstream-credentials.yaml', '05-service-body-policy.yaml', '06-service-lua-plugin.yaml']) {
      const r = await tc.cli('posternctl', ['apply', join(examples, f)]);
      assert.equal(r.code, 0, `${f}: ${r.err}`);
    }
    // ops-admin takes effect where it is attached: 04 attaches it to weather. eve is in no group.
    assert.equal((await tc.cli('posternctl', ['apply', '-'], { stdin: 'kind: User\nmetadata: {name: eve}\nspec: {type: HUMAN}\n' })).code, 0);
    const proxy = tc.cluster.proxy!;
    for (const svc of ['inventory.default', 'accounts.finance']) ports[svc] = await proxy.listenService(svc, '127.0.0.1', 0);
    pub = Number(tc.cluster.publicAddress!.split(':').at(-1));
    ca = tc.cluster.caPem!;
    await tc.connectedSession('alice', addr.alice);
    await tc.connectedSession('bob', addr.bob);
    await tc.connectedSession('ci-runner', addr.ci);
    await tc.connectedSession('eve', addr.eve);
    for (const u of ['alice', 'bob', 'ci-runner', 'eve']) token[u] = await tc.accessToken(u);
  });
  after(async () => {
    await tc?.stop();
    for (const u of ups.values()) await u.stop();
  });

  describe('02 inventory: dev may, others may not', () => {
    it('lets a dev through to the upstream with identity headers, and real curl agrees', async () => {
      const r = await send({ port: ports['inventory.default']!, path: '/items?x=1', from: addr.bob });
      assert.equal(r.status, 200, r.body);
      const seen = ups.get(9101)!.last()!;
      assert.equal(seen.url, '/items?x=1');
      assert.equal(seen.headers['x-postern-user'], 'bob');
      assert.equal(seen.headers['x-postern-groups'], 'dev');
      assert.equal(seen.headers['x-forwarded-for'], addr.bob);
      const curl = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--interface', addr.alice, `http://127.0.0.1:${ports['inventory.default']}/`]);
      assert.equal(curl.stdout, '200');
    });
    it('denies a user in no group with 403 and a request ID, and the upstream sees nothing', async () => {
      const before = ups.get(9101)!.seen.length;
      const r = await send({ port: ports['inventory.default']!, from: addr.eve });
      assert.equal(r.status, 403);
      assert.match(r.body, /request id: [0-9a-f-]{36}/);
      assert.ok(!/inline|rule|policy\//.test(r.body), 'no policy internals on the deny page');
      assert.equal(r.headers['x-postern-request-id']?.length, 36);
      assert.equal(ups.get(9101)!.seen.length, before);
    });
    it('answers 401 to an address with no session, and ignores bearer tokens on the tunnel side', async () => {
      const r = await send({ port: ports['inventory.default']!, from: '127.0.50.99', headers: { authorization: `Bearer ${token.bob}` } });
      assert.equal(r.status, 401);
    });
  });

  describe('03 catalog: routing by path and identity', () => {
    const get = (user: string, path: string) => send({ port: pub, path, tls: { host: 'catalog.example.test', ca }, headers: { authorization: `Bearer ${token[user]}` } });
    it('routes /stable and /beta with the prefix removed', async () => {
      const s = await get('bob', '/stable/list');
      assert.equal(s.status, 200, s.body);
      assert.equal(s.json().upstream, 'stable');
      assert.equal(s.json().url, '/list');
      const b = await get('bob', '/beta/list');
      assert.equal(b.json().upstream, 'beta');
      assert.equal(b.json().url, '/list');
    });
    it('routes /preview to the ops preview only for ops', async () => {
      const a = await get('alice', '/preview/x');
      assert.equal(a.json().upstream, 'preview');
      assert.equal(a.json().url, '/preview/x');
      const b = await get('bob', '/preview/x');
      assert.equal(b.status, 404, 'no rule matches bob, and catalog has no default config');
    });
    it('needs an identity even though the policy matches anything', async () => {
      const r = await send({ port: pub, path: '/stable/x', tls: { host: 'catalog.example.test', ca } });
      assert.equal(r.status, 401);
      assert.equal(r.headers['www-authenticate'], 'Bearer realm="postern"');
      const forged = await send({ port: pub, path: '/stable/x', tls: { host: 'catalog.example.test', ca }, headers: { authorization: 'Bearer abc.def.ghi' } });
      assert.equal(forged.status, 401);
    });
    it('accepts the token in x-postern-auth or the postern_auth cookie too, and strips both', async () => {
      const h = await send({ port: pub, path: '/stable/a', tls: { host: 'catalog.example.test', ca }, headers: { 'x-postern-auth': token.bob! } });
      assert.equal(h.status, 200);
      const c = await send({ port: pub, path: '/stable/b', tls: { host: 'catalog.example.test', ca }, headers: { cookie: `theme=dark; postern_auth=${token.bob}` } });
      assert.equal(c.status, 200);
      const seen = ups.get(9201)!.last()!;
      assert.equal(seen.headers.cookie, 'theme=dark');
      assert.equal(seen.headers['x-postern-auth'], undefined);
    });
    it('does not serve a private Service on the public listener', async () => {
      const r = await send({ port: pub, path: '/', tls: { host: 'inventory.example.test', ca }, headers: { authorization: `Bearer ${token.bob}` } });
      assert.equal(r.status, 404);
    });
  });

  describe('04 weather: the caller never sees the upstream token', () => {
    const call = (user: string, method = 'GET') => send({ port: pub, method, path: '/forecast', tls: { host: 'weather.example.test', ca }, headers: { authorization: `Bearer ${token[user]}` } });
    it('injects the Secret as the upstream bearer, adds x-gateway and removes server', async () => {
      const r = await call('ci-runner');
      assert.equal(r.status, 200, r.body);
      const seen = ups.get(9301)!.last()!;
      assert.equal(seen.headers.authorization, 'Bearer sk-example');
      assert.equal(seen.headers['x-gateway'], 'postern');
      assert.equal(r.headers.server, undefined);
      assert.ok(!JSON.stringify(r.headers).includes('sk-example'));
    });
    it('allows ops through ops-admin, WORKLOAD GETs, and denies the rest', async () => {
      assert.equal((await call('alice', 'DELETE')).status, 200);
      assert.equal((await call('ci-runner', 'POST')).status, 403);
      assert.equal((await call('bob')).status, 403);
    });
    it('uses a rotated Secret at once', async () => {
      const s = await tc.cluster.store.get('Secret', 'weather-token');
      await tc.cluster.store.update({ ...s!, spec: { data: { value: 'sk-rotated' } } });
      for (let i = 0; i < 100; i++) {
        await call('ci-runner');
        if (ups.get(9301)!.last()!.headers.authorization === 'Bearer sk-rotated') break;
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(ups.get(9301)!.last()!.headers.authorization, 'Bearer sk-rotated');
    });
  });

  describe('05 accounts.finance: method, path, header and JSON body; DENY wins', () => {
    const post = (who: keyof typeof addr, body: unknown, headers: Record<string, string> = { 'x-team': 'payments' }, path = '/transfers') =>
      send({ port: ports['accounts.finance']!, method: 'POST', path, from: addr[who], body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers } });
    it('allows a dev+ops POST to /transfers from payments, body intact', async () => {
      const r = await post('alice', { amount: 500, to: 'x' });
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(JSON.parse(ups.get(9401)!.last()!.body), { amount: 500, to: 'x' });
    });
    it('denies a transfer over 10000 even to alice (DENY before ALLOW)', async () => {
      const before = ups.get(9401)!.seen.length;
      assert.equal((await post('alice', { amount: 20000 })).status, 403);
      assert.equal(ups.get(9401)!.seen.length, before);
    });
    it('denies without the header, on another path, or without ops', async () => {
      assert.equal((await post('alice', { amount: 5 }, {})).status, 403);
      assert.equal((await post('alice', { amount: 5 }, { 'x-team': 'payments' }, '/other')).status, 403);
      assert.equal((await post('bob', { amount: 5 })).status, 403);
    });
    it('allows reads to anyone with a session', async () => {
      assert.equal((await send({ port: ports['accounts.finance']!, path: '/balance', from: addr.eve })).status, 200);
    });
    it('answers 413 beyond maxRequestSize when buffering', async () => {
      const big = 'x'.repeat(5 * 1024 * 1024);
      const r = await post('alice', { amount: 1, pad: big });
      assert.equal(r.status, 413);
    });
  });

  describe('posternctl explain says what the proxy does, without sending anything', () => {
    it('shows the DENY that beats the ALLOW, and every rule in order', async () => {
      const body = join(tc.dir, 'big.json');
      (await import('node:fs')).writeFileSync(body, JSON.stringify({ amount: 20000 }));
      const before = ups.get(9401)!.seen.length;
      const r = await tc.cli('posternctl', ['explain', '--service', 'accounts.finance', '--user', 'alice', '--method', 'POST', '--path', '/transfers', '--header', 'x-team=payments', '--body', body, '-o', 'json']);
      assert.equal(r.code, 0, r.err);
      const ex = JSON.parse(r.out) as { effect: string; reason: { rule: string }; rules: { rule: string; result: string }[] };
      assert.equal(ex.effect, 'DENY');
      assert.equal(ex.reason.rule, 'block-large-transfers');
      assert.deepEqual(ex.rules.map((x) => [x.rule, x.result]), [['block-large-transfers', 'matched'], ['dev-writes', 'not-reached'], ['reads', 'not-reached']]);
      assert.equal(ups.get(9401)!.seen.length, before, 'explain sends nothing');
      const small = join(tc.dir, 'small.json');
      (await import('node:fs')).writeFileSync(small, JSON.stringify({ amount: 5 }));
      const ok = await tc.cli('posternctl', ['explain', '--service', 'accounts.finance', '--user', 'alice', '--method', 'POST', '--path', '/transfers', '--header', 'x-team=payments', '--body', small]);
      assert.match(ok.out, /Decision: ALLOW, by rule "dev-writes" of policy "writes" on Service\/accounts\.finance \(priority 0\)/);
      assert.match(ok.out, /Route:    config "default" to http:\/\/127\.0\.0\.1:9401, path \/transfers/);
      assert.match(ok.out, /dev-writes\s+matched  <- decides/);
    });
    it('agrees with the live proxy on routing, and names the pre-check for CLIENTLESS on a private Service', async () => {
      const r = await tc.cli('posternctl', ['explain', '--service', 'catalog', '--user', 'alice', '--path', '/stable/x', '--clientless', '-o', 'json']);
      const ex = JSON.parse(r.out) as { effect: string; config: string; upstreamPath: string };
      assert.deepEqual([ex.effect, ex.config, ex.upstreamPath], ['ALLOW', 'stable', '/x']);
      const p = JSON.parse((await tc.cli('posternctl', ['explain', '--service', 'inventory', '--user', 'bob', '--clientless', '-o', 'json'])).out) as { effect: string; reason: { detail: string } };
      assert.deepEqual([p.effect, p.reason.detail], ['DENY', 'CLIENTLESS_ON_PRIVATE_SERVICE']);
    });
  });

  describe('06 signup: a Lua plugin checks and rewrites the body, and edits the response', () => {
    const post = (user: string, body: unknown) =>
      send({ port: pub, method: 'POST', path: '/register', tls: { host: 'signup.example.test', ca }, body: JSON.stringify(body), headers: { authorization: `Bearer ${token[user]}`, 'content-type': 'application/json' } });
    it('adds the caller\'s email to the body, drops X-Internal and sets X-User-Uid', async () => {
      const r = await post('alice', { age: 30, name: 'A' });
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(JSON.parse(ups.get(9501)!.last()!.body), { age: 30, name: 'A', email: 'alice@example.test' });
      assert.equal(r.headers['x-internal'], undefined);
      const alice = JSON.parse((await tc.cli('posternctl', ['get', 'user', 'alice', '-o', 'json'])).out) as { metadata: { uid: string } };
      assert.equal(r.headers['x-user-uid'], alice.metadata.uid);
    });
    it('stops under-age or age-less sign-ups with 400 before the upstream', async () => {
      const before = ups.get(9501)!.seen.length;
      assert.equal((await post('bob', { age: 15 })).status, 400);
      assert.equal((await post('bob', { name: 'no age' })).status, 400);
      assert.equal(ups.get(9501)!.seen.length, before);
    });
  });
});
