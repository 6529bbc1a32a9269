import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RecordingUpstream, send, startLoggedIn, type LoggedInPosternd } from '../harness/index.js';

const domain = 'fair.test';

/**
 * One posternd on the embedded database (PGlite runs each statement synchronously on the event
 * loop): while 400 Services are applied and the controller gives each its address, requests
 * through the proxy keep being answered. Before each statement took its turn on the event loop,
 * the controller's statements ran back to back and a request waited for all of them (seconds).
 */
describe('embedded database: the proxy keeps answering while the control plane is busy', () => {
  let c: LoggedInPosternd;
  let up: RecordingUpstream;
  let token = '';
  const get = () => send({ port: c.port, path: '/items', headers: { authorization: `Bearer ${token}` }, tls: { host: `api.${domain}`, ca: c.ca } });

  before(async () => {
    up = await RecordingUpstream.start(0, 'api');
    c = await startLoggedIn(domain);
    const r = await c.ctl(
      ['apply', '-'],
      `kind: User\nmetadata: {name: dana}\nspec: {type: HUMAN}\n---\nkind: Service\nmetadata: {name: api}\nspec:\n  isPublic: true\n  config: {upstream: {url: "http://127.0.0.1:${up.port}"}}\n  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {match: 'ctx.user.metadata.name == "dana"'}}]}}]}\n`,
    );
    assert.equal(r.code, 0, r.err);
    token = (await c.ctl(['create', 'credential', '--user', 'dana', '--type', 'access-token'])).out.trim();
  });

  after(async () => {
    await c?.stop();
    await up?.stop();
  });

  it('answers requests within a second while 400 Services are applied and get their addresses', async () => {
    assert.equal((await get()).status, 200);
    const many = Array.from({ length: 400 }, (_, i) => `kind: Service\nmetadata: {name: svc-${i}}\nspec:\n  config: {upstream: {url: "http://127.0.0.1:${up.port}"}}\n`).join('---\n');
    let applying = true;
    const latencies: number[] = [];
    // One request at a time, every 20 ms, for as long as the apply and the address assignment run.
    const probe = (async () => {
      while (applying) {
        const t = performance.now();
        const r = await get();
        assert.equal(r.status, 200, r.body);
        latencies.push(performance.now() - t);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    try {
      const r = await c.ctl(['apply', '-'], many);
      assert.equal(r.code, 0, r.err);
      // Until the controller has given the last one its address (each is a few statements);
      // asked twice a second: each ask is a posternctl process, and tests run beside this one.
      const deadline = Date.now() + 60_000;
      for (;;) {
        const list = JSON.parse((await c.ctl(['get', 'service', '-o', 'json'])).out) as { items: { status?: { addresses?: unknown[] } }[] };
        if (list.items.length === 401 && list.items.every((s) => s.status?.addresses?.length)) break;
        assert.ok(Date.now() < deadline, 'every Service got its address within a minute');
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    } finally {
      applying = false;
      await probe;
    }
    assert.ok(latencies.length >= 10, `${latencies.length} requests during the apply`);
    const worst = Math.max(...latencies);
    assert.ok(worst < 1000, `the slowest request during the apply took ${worst.toFixed(0)} ms`);
  });
});
