import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { RecordingUpstream, childPids, send, startLoggedIn, type LoggedInPosternd, type RunningPosternd } from '../harness/index.js';

const domain = 'workers.test';

/**
 * `posternd up --proxy-workers 2` with the real binary: the public HTTPS listener served by two
 * worker processes fed from the primary (no database of their own), certificates issued by the
 * primary, one rate limit across both, revocation reaching both at once, a killed worker replaced.
 */
describe('proxy workers: the public listener in several processes', () => {
  let c: LoggedInPosternd;
  let d: RunningPosternd;
  let up: RecordingUpstream;
  let token = '';
  const ctl = (args: string[], stdin?: string) => c.ctl(args, stdin);
  const get = (svc: string) => send({ port: c.port, path: '/items', headers: { authorization: `Bearer ${token}` }, tls: { host: `${svc}.${domain}`, ca: c.ca } });
  /** The pids holding connections to the upstream: each proxy process keeps its own keep-alive pool. */
  const upstreamClients = () => {
    const out = spawnSync('ss', ['-tnpH', 'state', 'established', 'dst', `127.0.0.1:${up.port}`], { encoding: 'utf8' }).stdout;
    return new Set([...out.matchAll(/pid=(\d+)/g)].map((m) => Number(m[1])));
  };
  /** posternd's worker processes now. */
  const workerPids = () =>
    childPids(d.proc.pid!).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('proxy-worker.js');
      } catch {
        return false;
      }
    });

  before(async () => {
    up = await RecordingUpstream.start(0, 'inventory');
    c = await startLoggedIn(domain, ['--proxy-workers', '2']);
    d = c.d;
    const svc = (name: string, extra = '') =>
      `kind: Service\nmetadata: {name: ${name}}\nspec:\n  isPublic: true\n  config:\n    upstream: {url: "http://127.0.0.1:${up.port}"}\n${extra}  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {match: 'ctx.user.metadata.name == "dana"'}}]}}]}`;
    const r = await ctl(['apply', '-'], ['kind: User\nmetadata: {name: dana}\nspec: {type: HUMAN}', svc('api'), svc('limited', '    http:\n      plugins:\n        - {name: five, rateLimit: {limit: 5, window: {minutes: 1}, key: {perUser: true}}}\n')].join('\n---\n'));
    assert.equal(r.code, 0, r.err);
    token = (await ctl(['create', 'credential', '--user', 'dana', '--type', 'access-token'])).out.trim();
  });

  after(async () => {
    const workers = d ? workerPids() : [];
    await c?.stop();
    for (const pid of workers) assert.throws(() => process.kill(pid, 0), 'no worker outlives posternd');
    await up?.stop();
  });

  it('starts two workers that share the port and serve HTTPS with the cluster CA\'s certificates', async () => {
    assert.equal(new Set(workerPids()).size, 2);
    assert.ok(!workerPids().includes(d.proc.pid!), 'the workers are other processes');
    // Fresh connections, 8 at a time: whichever worker is free accepts the next.
    for (let i = 0; i < 6; i++) {
      for (const r of await Promise.all(Array.from({ length: 8 }, () => get('api')))) assert.equal(r.status, 200, r.body);
    }
    const clients = upstreamClients();
    assert.deepEqual([...clients].sort(), [...workerPids()].sort(), 'both workers forwarded requests, and the primary none');
  });

  it('counts a rate limit once for all workers', async () => {
    const codes: number[] = [];
    for (let i = 0; i < 9; i++) codes.push((await get('limited')).status);
    assert.deepEqual(codes, [200, 200, 200, 200, 200, 429, 429, 429, 429]);
  });

  it('revokes in every worker at once when the session is deleted', async () => {
    const sessions = JSON.parse((await ctl(['get', 'session', '-o', 'json'])).out) as { items: { metadata: { name: string }; status: { userRef: { name: string } } }[] };
    const dana = sessions.items.filter((s) => s.status.userRef.name === 'dana');
    assert.equal(dana.length, 1);
    assert.equal((await ctl(['delete', 'session', dana[0]!.metadata.name])).code, 0);
    const t0 = performance.now();
    let codes: number[] = [];
    while (performance.now() - t0 < 2000) {
      codes = await Promise.all(Array.from({ length: 6 }, () => get('api').then((r) => r.status)));
      if (codes.every((c) => c === 401)) break;
    }
    assert.deepEqual(codes, [401, 401, 401, 401, 401, 401]);
    assert.ok(performance.now() - t0 < 1000, `revoked within ${Math.round(performance.now() - t0)} ms`);
    token = (await ctl(['create', 'credential', '--user', 'dana', '--type', 'access-token'])).out.trim();
  });

  it('replaces a worker that dies, and keeps serving meanwhile', async () => {
    const [victim, survivor] = workerPids();
    process.kill(victim!, 'SIGKILL');
    for (let i = 0; i < 10; i++) assert.equal((await get('api')).status, 200);
    const t0 = performance.now();
    let now: number[] = [];
    while (performance.now() - t0 < 10_000) {
      now = workerPids();
      if (now.length === 2 && !now.includes(victim!)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(now.length, 2, 'two workers again');
    assert.ok(now.includes(survivor!) && !now.includes(victim!), 'the dead one was replaced');
    for (let i = 0; i < 10; i++) assert.equal((await get('api')).status, 200);
  });
});
