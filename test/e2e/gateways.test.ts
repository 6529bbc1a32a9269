import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestPostgres, Topology, spawnPosternd, type Host, type RunningPosternd } from '../harness/index.js';

const domain = 'example.test';
const fixtures = join(import.meta.dirname, '../../e2e/fixtures');

/**
 * Several gateway hosts sharing one cluster (DESIGN.md §6), on network namespaces: posternd in
 * `gw` and in `gw2`, one real PostgreSQL (in gw, reached by gw2 over the LAN), real wireguard-go.
 * Every gateway serves every Service and has every connected session as a peer; a client uses one
 * gateway and moves to another when its gateway crashes (silent for 3 heartbeats) or stops (DOWN).
 * gw1 serves its Service listeners from two proxy worker processes, gw2 from its own process.
 */
describe('several gateways share one cluster', () => {
  let topo: Topology;
  let gw2Host: Host;
  let pgSrv: TestPostgres;
  let gw1: RunningPosternd;
  let gw2: RunningPosternd | undefined;
  let dir: string;
  const iface = (n: string) => `${topo.prefix}${n}`;
  const home = (who: string) => join(dir, 'home', who);
  const postern = (host: Host, who: string, args: string[]) => topo.cli(host, 'postern', home(who), domain, args, { timeoutMs: 30_000 });
  const ctl = (args: string[], input?: string) => topo.cli(topo.gw, 'posternctl', home('root'), domain, args, input !== undefined ? { input } : {});
  const curl = (host: Host) => topo.run(host, 'curl', ['-s', '-o', '-', '-w', '\n%{http_code}', '--max-time', '2', `http://inventory.local.${domain}/`]);
  const startGw2 = () =>
    spawnPosternd(
      ['up', '--domain', domain, '--listen', '198.18.0.2:8443', '--public-listen', 'off', '--database', pgSrv.lanUrl, '--data', join(dir, 'gw2'), '--gateway-endpoint', '198.18.0.2', '--gateway-name', 'gw2', '--wg-interface', iface('wh'), '--gateway-heartbeat', '1'],
      { cwd: dir, netns: gw2Host.ns, timeoutMs: 60_000 },
    );
  const tunnelState = (who: string) => JSON.parse(readFileSync(join(home(who), 'tunnels', `${domain}.json`), 'utf8')) as { gatewayName: string; gateway: string };
  const gateways = async () => {
    const r = await ctl(['get', 'gateway', '-o', 'json']);
    assert.equal(r.code, 0, r.err);
    return (JSON.parse(r.out) as { items: { metadata: { name: string }; status: { state?: string; lastSeenAt?: string; wireguard: { publicKey: string } } }[] }).items;
  };
  /** Polls until `check` holds; returns how long it took. */
  const until = async (what: string, check: () => Promise<boolean>, ms = 20_000) => {
    const t0 = performance.now();
    while (!(await check())) {
      if (performance.now() - t0 > ms) assert.fail(`${what}: not within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
    return performance.now() - t0;
  };
  const reaches = async (host: Host) => (await curl(host)).out === 'inventory says hello to alice\n\n200';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'postern-gateways-'));
    topo = Topology.create({ secondGateway: true });
    gw2Host = topo.gw2!;
    pgSrv = await TestPostgres.create({ netns: topo.gw.ns, lan: { address: topo.gw.ip, allow: '198.18.0.0/24' } });
    topo.start(topo.upstream, process.execPath, [join(fixtures, 'upstream-server.mjs'), '0.0.0.0', '9101', 'inventory']);
    gw1 = await spawnPosternd(
      ['up', '--domain', domain, '--listen', '198.18.0.1:8443', '--public-listen', 'off', '--database', pgSrv.url, '--data', join(dir, 'gw1'), '--gateway-endpoint', '198.18.0.1', '--gateway-name', 'gw1', '--wg-interface', iface('wg'), '--gateway-heartbeat', '1', '--proxy-workers', '2'],
      { cwd: dir, netns: topo.gw.ns, timeoutMs: 60_000 },
    );
    gw2 = await startGw2();
    let r = await postern(topo.gw, 'root', ['login', '--api', '198.18.0.1:8443', '--auth-token', gw1.rootToken!]);
    assert.equal(r.code, 0, r.err);
    r = await ctl(
      ['apply', '-'],
      `kind: User
metadata: {name: alice}
spec: {type: HUMAN}
---
kind: Service
metadata: {name: inventory}
spec:
  config:
    upstream: {url: "http://198.18.9.2:9101"}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - {effect: ALLOW, condition: {match: 'ctx.user.metadata.name == "alice"'}}
`,
    );
    assert.equal(r.code, 0, r.err);
    for (const [host, who] of [
      [topo.client1, 'c1'],
      [topo.client2, 'c2'],
    ] as const) {
      const token = (await ctl(['create', 'credential', '--user', 'alice', '--type', 'auth-token'])).out.trim();
      r = await postern(host, who, ['login', '--api', '198.18.0.1:8443', '--auth-token', token]);
      assert.equal(r.code, 0, r.err);
    }
  });

  after(async () => {
    await gw2?.stop();
    await gw1?.stop();
    await pgSrv?.stop();
    topo?.destroy();
    for (const n of ['wg', 'wh', 'c1', 'c2']) rmSync(`/var/run/wireguard/${topo?.prefix}${n}.sock`, { force: true });
    await pgSrv?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers both gateways as READY, each with its own key, both heartbeating', async () => {
    const items = await gateways();
    assert.deepEqual(items.map((g) => g.metadata.name).sort(), ['gw1', 'gw2']);
    assert.ok(items.every((g) => g.status.state === 'READY'));
    assert.notEqual(items[0]!.status.wireguard.publicKey, items[1]!.status.wireguard.publicKey);
    const before = new Map(items.map((g) => [g.metadata.name, g.status.lastSeenAt]));
    await until('both gateways heartbeat', async () => (await gateways()).every((g) => g.status.lastSeenAt !== before.get(g.metadata.name)));
  });

  it('a client that asks for gw2 reaches the Service through gw2; its session is a peer on both gateways', async () => {
    const c = await postern(topo.client1, 'c1', ['connect', '-d', '--implementation', 'tun', '--interface', iface('c1'), '--gateway', 'gw2']);
    assert.equal(c.code, 0, c.err);
    assert.match(c.out, /via gateway gw2 \(198\.18\.0\.2:53820\)/);
    await until('client1 reaches inventory through gw2', () => reaches(topo.client1), 10_000);
    // The request went through gw2: its interface has the handshake, gw1's has none.
    const dump = async (host: Host, name: string) => (await topo.run(host, 'wg', ['show', iface(name), 'dump'])).out.trim().split('\n').slice(1).map((l) => l.split('\t'));
    const on2 = await dump(gw2Host, 'wh');
    const on1 = await dump(topo.gw, 'wg');
    const key = (await topo.run(topo.client1, 'wg', ['show', iface('c1'), 'public-key'])).out.trim();
    assert.ok(Number(on2.find((p) => p[0] === key)?.[4]) > 0, 'handshake with gw2');
    assert.equal(on1.find((p) => p[0] === key)?.[4], '0', 'a peer on gw1 too, without a handshake');
    const status = await postern(topo.client1, 'c1', ['status']);
    assert.match(status.out, /via gateway gw2 \(198\.18\.0\.2:53820\)/);
  });

  it('pushes what the session may reach on the tunnel\'s control stream: the client says when a Service appears or goes', async () => {
    const log = () => readFileSync(join(home('c1'), 'tunnels', `${domain}.log`), 'utf8');
    const billing = `kind: Service
metadata: {name: billing}
spec:
  config: {upstream: {url: "http://198.18.9.2:9101"}}
  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {match: 'ctx.user.metadata.name == "alice"'}}]}}]}
`;
    assert.equal((await ctl(['apply', '-'], billing)).code, 0);
    await until('client1 hears that billing is reachable', async () => log().includes(`now reachable: http://billing.local.${domain}/`), 5000);
    assert.equal((await ctl(['delete', 'service', 'billing'])).code, 0);
    await until('client1 hears that billing is gone', async () => log().includes(`no longer reachable: http://billing.local.${domain}/`), 5000);
  });

  it('a client with no preference gets a gateway from the cluster and reaches the Service', async () => {
    const c = await postern(topo.client2, 'c2', ['connect', '-d', '--implementation', 'tun', '--interface', iface('c2')]);
    assert.equal(c.code, 0, c.err);
    await until('client2 reaches inventory', () => reaches(topo.client2), 10_000);
    assert.ok(['gw1', 'gw2'].includes(tunnelState('c2').gatewayName));
  });

  it('when a gateway host crashes, its clients move to another gateway within a few heartbeats', async (t) => {
    // The host is gone: posternd killed and its WireGuard interface with it.
    gw2!.proc.kill('SIGKILL');
    await new Promise((r) => gw2!.proc.once('exit', r));
    gw2 = undefined;
    await topo.run(gw2Host, 'ip', ['link', 'del', iface('wh')]);
    const ms = await until('client1 moves to gw1 and reaches inventory', async () => tunnelState('c1').gatewayName === 'gw1' && (await reaches(topo.client1)));
    t.diagnostic(`failover after a crash: ${Math.round(ms)} ms (heartbeat 1 s)`);
    // On gw1 the tunnel traffic is served by the proxy workers: they hold the upstream connections.
    const ss = await topo.run(topo.gw, 'ss', ['-tnpH', 'state', 'established', 'dst', '198.18.9.2:9101']);
    const owners = [...new Set([...ss.out.matchAll(/pid=(\d+)/g)].map((m) => m[1]!))];
    assert.ok(owners.length > 0, ss.out + ss.err);
    for (const pid of owners) assert.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /proxy-worker\.js/);
    assert.equal(tunnelState('c2').gatewayName, 'gw1');
    assert.ok(await reaches(topo.client2));
  });

  it('a client that asked for gw2 goes back when gw2 returns, and leaves at once when gw2 stops cleanly (DOWN)', async (t) => {
    gw2 = await startGw2();
    await until('client1 back on gw2', async () => tunnelState('c1').gatewayName === 'gw2' && (await reaches(topo.client1)));
    assert.equal(tunnelState('c2').gatewayName, 'gw1', 'a client on a live gateway is not moved by another joining');
    const stopped = performance.now();
    await gw2.stop();
    gw2 = undefined;
    assert.equal((await gateways()).find((g) => g.metadata.name === 'gw2')?.status.state, 'DOWN');
    await until('client1 moves to gw1', async () => tunnelState('c1').gatewayName === 'gw1' && (await reaches(topo.client1)));
    t.diagnostic(`failover after a clean stop: ${Math.round(performance.now() - stopped)} ms`);
  });
});
