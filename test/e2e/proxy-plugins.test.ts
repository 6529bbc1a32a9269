import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RecordingUpstream, send, startTestCluster, type TestCluster } from '../harness/index.js';

/** The Lua sandbox, rateLimit, direct and jsonSchema plugins, and plugins refused at apply time. */
describe('proxy plugins', () => {
  let tc: TestCluster;
  let up: RecordingUpstream;
  const from = '127.0.80.2';
  const ports: Record<string, number> = {};
  before(async () => {
    up = await RecordingUpstream.start(0, 'plug');
    tc = await startTestCluster();
    await tc.login('root');
    const svc = (name: string, plugins: string) =>
      `kind: Service\nmetadata: {name: ${name}}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:${up.port}"}\n    http:\n      plugins:\n${plugins}\n  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {matchAny: true}}]}}]}`;
    const yaml = [
      'kind: User\nmetadata: {name: pat}\nspec: {type: HUMAN}',
      svc('sandbox', `        - name: probe\n          lua:\n            inline: |\n              function onRequest(ctx)\n                octelium.req.setRequestHeader("x-libs", type(io) .. "," .. type(os) .. "," .. type(load) .. "," .. type(require) .. "," .. type(dofile) .. "," .. type(string.format))\n              end`),
      svc('spin', `        - name: spin\n          lua:\n            inline: |\n              function onRequest(ctx)\n                while true do end\n              end`),
      svc('hog', `        - name: hog\n          lua:\n            inline: |\n              function onRequest(ctx)\n                local t = {}\n                for i = 1, 1e8 do t[i] = string.rep("x", 100) end\n              end`),
      svc('limited', `        - name: two-per-minute\n          rateLimit: {limit: 2, window: {minutes: 1}, key: {perUser: true}}`),
      svc('direct', `        - name: maintenance\n          condition: {match: 'ctx.request.http.path.startsWith("/down")'}\n          direct: {statusCode: 503, body: "down for maintenance", headers: {retry-after: "120"}}`),
      svc('orders', `        - name: order-shape\n          condition: {match: 'ctx.request.http.method == "POST"'}\n          jsonSchema:\n            inline: '{"type": "object", "required": ["item", "qty"], "properties": {"item": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}, "additionalProperties": false}'`),
      // Denies everyone, but its PRE_AUTH plugins act before that decision.
      `kind: Service\nmetadata: {name: gated}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:${up.port}"}\n    http:\n      plugins:\n        - name: health\n          phase: PRE_AUTH\n          condition: {match: 'ctx.request.http.path == "/healthz"'}\n          direct: {statusCode: 200, body: "ok"}\n        - name: one-per-minute\n          phase: PRE_AUTH\n          rateLimit: {limit: 1, window: {minutes: 1}, key: {perUser: true}}\n  authorization: {inlinePolicies: [{spec: {rules: [{effect: DENY, condition: {matchAny: true}}]}}]}`,
    ].join('\n---\n');
    const r = await tc.cli('posternctl', ['apply', '-'], { stdin: yaml });
    assert.equal(r.code, 0, r.err);
    for (const n of ['sandbox', 'spin', 'hog', 'limited', 'direct', 'orders', 'gated']) ports[n] = await tc.cluster.proxy!.listenService(`${n}.default`, '127.0.0.1', 0);
    await tc.connectedSession('pat', from);
  });
  after(async () => {
    await tc?.stop();
    await up?.stop();
  });

  it('gives Lua no io, os, load, require or dofile, but the string library', async () => {
    const r = await send({ port: ports.sandbox!, from });
    assert.equal(r.status, 200, r.body);
    assert.equal(up.last()!.headers['x-libs'], 'nil,nil,nil,nil,nil,function');
  });

  it('stops a plugin that loops forever, and one that eats memory, with 500 — and keeps serving', async () => {
    const t0 = Date.now();
    assert.equal((await send({ port: ports.spin!, from })).status, 500);
    assert.ok(Date.now() - t0 < 2000, 'the time limit stopped it');
    assert.equal((await send({ port: ports.hog!, from })).status, 500);
    assert.equal((await send({ port: ports.sandbox!, from })).status, 200);
  });

  it('rate-limits per user with 429 and Retry-After', async () => {
    const codes = [];
    for (let i = 0; i < 3; i++) codes.push(await send({ port: ports.limited!, from }));
    assert.deepEqual(codes.map((r) => r.status), [200, 200, 429]);
    assert.ok(Number(codes[2]!.headers['retry-after']) > 0);
  });

  it('holds plugins for WebSocket upgrades too: the rate limit and a direct answer', async () => {
    const upgrade = { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' };
    const before = up.seen.length;
    const limited = await send({ port: ports.limited!, from, headers: upgrade });
    assert.equal(limited.status, 429, 'the user spent the limit in the test above');
    assert.ok(Number(limited.headers['retry-after']) > 0);
    const down = await send({ port: ports.direct!, from, path: '/down/ws', headers: upgrade });
    assert.deepEqual([down.status, down.headers['retry-after']], [503, '120']);
    assert.match(down.body, /down for maintenance/);
    assert.equal(up.seen.length, before, 'neither reached the upstream');
  });

  it('answers directly when the condition holds, and forwards otherwise', async () => {
    const down = await send({ port: ports.direct!, from, path: '/down/x' });
    assert.deepEqual([down.status, down.body, down.headers['retry-after']], [503, 'down for maintenance', '120']);
    assert.equal((await send({ port: ports.direct!, from, path: '/up' })).status, 200);
  });

  it('checks request bodies against a JSON Schema: 400 with the reason, and nothing reaches the upstream', async () => {
    const before = up.seen.length;
    const post = (body: string) => send({ port: ports.orders!, from, method: 'POST', body, headers: { 'content-type': 'application/json' } });
    const ok = await post('{"item": "bolt", "qty": 3}');
    assert.equal(ok.status, 200, ok.body);
    assert.equal(up.last()!.body, '{"item": "bolt", "qty": 3}');
    const wrongType = await post('{"item": "bolt", "qty": "three"}');
    assert.equal(wrongType.status, 400);
    assert.match(wrongType.body, /does not match the schema: \/qty must be integer/);
    const extra = await post('{"item": "bolt", "qty": 1, "price": 0}');
    assert.match(extra.body, /must NOT have additional properties/);
    assert.equal((await post('not json')).status, 400);
    assert.equal((await post('')).status, 400);
    assert.equal(up.seen.length, before + 1, 'only the valid order was forwarded');
    assert.equal((await send({ port: ports.orders!, from })).status, 200, 'the plugin\'s condition leaves GETs alone');
  });

  it('runs PRE_AUTH plugins before the decision: a direct answer and a rate limit act even where the policy denies', async () => {
    const health = await send({ port: ports.gated!, from, path: '/healthz' });
    assert.deepEqual([health.status, health.body], [200, 'ok']);
    assert.equal((await send({ port: ports.gated!, from, path: '/x' })).status, 403, 'the rate limit counts it; the policy denies it');
    assert.equal((await send({ port: ports.gated!, from, path: '/x' })).status, 429, 'the second is stopped before the decision');
  });

  it('refuses plugins it cannot run at apply time, loudly', async () => {
    const r = await tc.cli('posternctl', ['apply', '-'], {
      stdin: `kind: Service\nmetadata: {name: ext}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:1"}\n    http:\n      plugins:\n        - name: x\n          extProc: {address: "http://127.0.0.1:9"}\n`,
    });
    assert.equal(r.code, 1);
    assert.match(r.err, /<stdin>:9:\d+: spec\.config\.http\.plugins\[0\]\.extProc\.address: not a gRPC address: write host:port/);
    const schema = await tc.cli('posternctl', ['apply', '-'], {
      stdin: `kind: Service\nmetadata: {name: bad-schema}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:1"}\n    http:\n      plugins:\n        - name: x\n          jsonSchema: {inline: '{"type": "nope"}'}\n`,
    });
    assert.equal(schema.code, 1);
    assert.match(schema.err, /<stdin>:9:\d+: spec\.config\.http\.plugins\[0\]\.jsonSchema\.inline: not a usable JSON Schema: schema is invalid/);
  });
});
