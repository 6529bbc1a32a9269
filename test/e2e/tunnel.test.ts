import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { TestPostgres, Topology, originalResolvConf, spawnPosternd, type Host, type RunningPosternd } from '../harness/index.js';

const domain = 'example.test';
const fixtures = join(import.meta.dirname, '../../e2e/fixtures');

/**
 * The WireGuard overlay end to end on network namespaces (DESIGN.md §7): real wireguard-go,
 * real PostgreSQL, posternd with its gateway in `gw`, `postern connect` in two clients, real curl
 * and dig. client1 (dev) reaches inventory by its private name; client2 (no dev) gets 403;
 * revoking client1's session removes its peer within a second; disconnect restores resolv.conf
 * byte for byte; the gateway restarts under a live tunnel; a stock wg-quick peer gets in too.
 */
describe('tunnels: gateway agent, private DNS, postern connect', () => {
  let topo: Topology;
  let pgSrv: TestPostgres;
  let gw: RunningPosternd;
  let dir: string;
  let dbUrl: string;
  let wgIface: string;
  const home = (who: string) => join(dir, 'home', who);
  const postern = (host: Host, who: string, args: string[], timeoutMs = 30_000) => topo.cli(host, 'postern', home(who), domain, args, { timeoutMs });
  const ctl = (args: string[], input?: string) => topo.cli(topo.gw, 'posternctl', home('root'), domain, args, input !== undefined ? { input } : {});
  const curl = (host: Host, url: string, maxTime = 3) => topo.run(host, 'curl', ['-s', '-o', '-', '-w', '\n%{http_code}', '--max-time', String(maxTime), url]);
  const startGateway = async () =>
    spawnPosternd(
      ['up', '--domain', domain, '--listen', '198.18.0.1:8443', '--public-listen', 'off', '--database', dbUrl, '--data', join(dir, 'gwdata'), '--gateway-endpoint', '198.18.0.1', '--gateway-name', 'gw1', '--wg-interface', wgIface, '--dns-forwarder', '127.0.0.1:5353'],
      { cwd: dir, netns: topo.gw.ns, timeoutMs: 60_000 },
    );
  const peersOnGateway = async () => (await topo.run(topo.gw, 'wg', ['show', wgIface, 'peers'])).out.split('\n').filter(Boolean);
  const credential = async (user: string) => {
    const r = await ctl(['create', 'credential', '--user', user, '--type', 'auth-token']);
    assert.equal(r.code, 0, r.err);
    return r.out.trim();
  };
  const login = async (host: Host, who: string, user: string) => {
    const r = await postern(host, who, ['login', '--api', '198.18.0.1:8443', '--auth-token', await credential(user)]);
    assert.equal(r.code, 0, r.err);
  };
  const sessionOf = (who: string) => (JSON.parse(readFileSync(join(home(who), 'sessions', `${domain}.json`), 'utf8')) as { sessionName: string }).sessionName;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'postern-tunnel-'));
    topo = Topology.create();
    wgIface = `${topo.prefix}wg`;
    pgSrv = await TestPostgres.create({ netns: topo.gw.ns });
    dbUrl = pgSrv.url;
    topo.start(topo.upstream, process.execPath, [join(fixtures, 'upstream-server.mjs'), '0.0.0.0', '9101', 'inventory']);
    topo.start(topo.gw, process.execPath, [join(fixtures, 'dns-forwardee.mjs'), '127.0.0.1', '5353']);
    gw = await startGateway();
    const r = await postern(topo.gw, 'root', ['login', '--api', '198.18.0.1:8443', '--auth-token', gw.rootToken!]);
    assert.equal(r.code, 0, r.err);
    const applied = await ctl(
      ['apply', '-'],
      `kind: Group
metadata: {name: dev}
---
kind: User
metadata: {name: alice}
spec: {type: HUMAN, groups: [dev]}
---
kind: User
metadata: {name: bob}
spec: {type: HUMAN}
---
kind: Service
metadata: {name: inventory}
spec:
  mode: HTTP
  config:
    upstream: {url: "http://198.18.9.2:9101"}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition: {match: '"dev" in ctx.user.spec.groups'}
`,
    );
    assert.equal(applied.code, 0, applied.err);
    await login(topo.client1, 'alice', 'alice');
    await login(topo.client2, 'bob', 'bob');
  });

  after(async () => {
    // Each step runs even if one before it fails: namespaces and sockets must not outlive the file.
    await gw?.stop().catch(() => {});
    await pgSrv?.stop().catch(() => {});
    topo?.destroy();
    rmSync(`/var/run/wireguard/${wgIface}.sock`, { force: true });
    for (const i of ['c1', 'c2', 'q1']) rmSync(`/var/run/wireguard/${topo?.prefix}${i}.sock`, { force: true });
    await pgSrv?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers the gateway and gives the Service an address from the Service range', async () => {
    const g = JSON.parse((await ctl(['get', 'gateway', 'gw1', '-o', 'json'])).out) as { status: { wireguard: { port: number; publicKey: string }; publicIPs: string[] } };
    assert.equal(g.status.wireguard.port, 53820);
    assert.deepEqual(g.status.publicIPs, ['198.18.0.1']);
    let ip = '';
    for (let i = 0; i < 50 && !ip; i++) {
      const s = JSON.parse((await ctl(['get', 'service', 'inventory', '-o', 'json'])).out) as { status?: { addresses?: { dualStackIP: { ipv4: string } }[] } };
      ip = s.status?.addresses?.[0]?.dualStackIP.ipv4 ?? '';
      if (!ip) await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(ip, /^100\.64\.\d+\.\d+$/);
  });

  it('connects client1 (dev): curl by private name resolves through the private DNS and reaches the upstream', async () => {
    const c = await postern(topo.client1, 'alice', ['connect', '-d', '--implementation', 'tun', '--interface', `${topo.prefix}c1`]);
    assert.equal(c.code, 0, c.err);
    assert.match(c.out, /Connected to example\.test in the background .*100\.65\.\d+\.\d+\/32/);
    const res = await curl(topo.client1, `http://inventory.local.${domain}/`);
    assert.equal(res.out, 'inventory says hello to alice\n\n200', res.err);
    const dig = await topo.run(topo.client1, 'dig', ['+short', '+time=2', '+tries=1', `inventory.local.${domain}`]);
    assert.match(dig.out.trim(), /^100\.64\.\d+\.\d+$/);
    const nx = await topo.run(topo.client1, 'dig', ['+time=2', '+tries=1', `nope.local.${domain}`]);
    assert.match(nx.out, /status: NXDOMAIN/);
    const direct = await topo.run(topo.gw, 'dig', ['+short', '+time=2', '+tries=1', '@127.0.0.1', '-p', '5353', 'www.example.net']);
    assert.equal(direct.out.trim(), '198.18.9.99', `the second DNS server answers on the gateway host: ${direct.out}${direct.err}`);
    const fwd = await topo.run(topo.client1, 'dig', ['+short', '+time=3', '+tries=1', 'www.example.net']);
    assert.equal(fwd.out.trim(), '198.18.9.99', 'other names are forwarded to the configured resolver');
    const route = await topo.run(topo.client1, 'ip', ['route', 'show', 'default']);
    assert.equal(route.out.trim(), '', 'no default route was added');
    const status = await postern(topo.client1, 'alice', ['status', '-o', 'json']);
    assert.equal(JSON.parse(status.out).connected, true, status.err);
  });

  it('connects client2 (no dev): the tunnel works, the proxy answers 403', async () => {
    const c = await postern(topo.client2, 'bob', ['connect', '-d', '--implementation', 'tun', '--interface', `${topo.prefix}c2`]);
    assert.equal(c.code, 0, c.err);
    const res = await curl(topo.client2, `http://inventory.local.${domain}/`);
    assert.match(res.out, /\n403$/);
    assert.equal((await peersOnGateway()).length, 2);
  });

  it('revoking client1\'s session removes its peer and stops its requests within 1 s', async (t) => {
    // Timed from the revocation itself, the moment a watch on the database sees the Session
    // deleted (NOTIFY, a few ms after the commit), not from the start of the posternctl process
    // that asks for it: its start-up on two loaded cores took most of a second.
    const session = sessionOf('alice');
    const watcher = topo.start(topo.gw, process.execPath, [join(fixtures, 'session-deleted.mjs'), dbUrl, session]);
    let said = '';
    const saw = (what: RegExp) =>
      new Promise<RegExpMatchArray>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the watcher did not say ${what} within 30 s; it said: ${said}`)), 30_000);
        const check = () => {
          const m = said.match(what);
          if (m) (clearTimeout(timer), resolve(m));
        };
        watcher.stdout!.on('data', (d: Buffer) => ((said += d.toString()), check()));
        watcher.once('exit', (code) => setImmediate(() => (check(), reject(new Error(`the watcher exited (${code}) having said: ${said}`)))));
        check();
      });
    await saw(/^ready$/m);
    const started = Date.now();
    const del = await ctl(['delete', 'session', session]);
    assert.equal(del.code, 0, del.err);
    let gone = false;
    while (!gone && Date.now() - started < 5000) {
      gone = (await peersOnGateway()).length === 1;
      if (!gone) await new Promise((r) => setTimeout(r, 20));
    }
    const goneAt = Date.now();
    const revokedAt = Number((await saw(/^deleted (\d+)$/m))[1]);
    const peerGoneMs = goneAt - revokedAt;
    t.diagnostic(`posternctl delete → revoked ${revokedAt - started} ms; revoked → peer gone ${peerGoneMs} ms`);
    assert.ok(gone && peerGoneMs < 1000, `peer removed ${peerGoneMs} ms after the revocation`);
    const res = await curl(topo.client1, `http://inventory.local.${domain}/`, 1);
    assert.notEqual(res.out.split('\n').at(-1), '200', 'the revoked client gets nothing through');
    assert.ok(Date.now() - revokedAt < 2500);
  });

  it('disconnect restores client2\'s resolv.conf byte for byte and removes the interface', async () => {
    assert.notEqual(readFileSync(`/etc/netns/${topo.client2.ns}/resolv.conf`, 'utf8'), originalResolvConf, 'connect changed it');
    const d = await postern(topo.client2, 'bob', ['disconnect']);
    assert.equal(d.code, 0, d.err);
    assert.equal(readFileSync(`/etc/netns/${topo.client2.ns}/resolv.conf`, 'utf8'), originalResolvConf);
    const link = await topo.run(topo.client2, 'ip', ['link', 'show', `${topo.prefix}c2`]);
    assert.notEqual(link.code, 0, 'the interface is gone');
  });

  it('cleans up after a connect killed with -9', async () => {
    await login(topo.client1, 'alice', 'alice');
    const c = await postern(topo.client1, 'alice', ['connect', '-d', '--implementation', 'tun', '--interface', `${topo.prefix}c1`]);
    assert.equal(c.code, 0, c.err);
    const state = JSON.parse(readFileSync(join(home('alice'), 'tunnels', `${domain}.json`), 'utf8')) as { pid: number };
    process.kill(state.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    assert.notEqual(readFileSync(`/etc/netns/${topo.client1.ns}/resolv.conf`, 'utf8'), originalResolvConf, 'the killed connect left its DNS behind');
    assert.equal((await topo.run(topo.client1, 'ip', ['link', 'show', `${topo.prefix}c1`])).code, 0, 'and its interface');
    const d = await postern(topo.client1, 'alice', ['disconnect']);
    assert.equal(d.code, 0, d.err);
    assert.equal(readFileSync(`/etc/netns/${topo.client1.ns}/resolv.conf`, 'utf8'), originalResolvConf);
    assert.notEqual((await topo.run(topo.client1, 'ip', ['link', 'show', `${topo.prefix}c1`])).code, 0);
  });

  it('keeps a re-connected client working across a gateway restart', async () => {
    const c = await postern(topo.client1, 'alice', ['connect', '-d', '--implementation', 'tun', '--interface', `${topo.prefix}c1`]);
    assert.equal(c.code, 0, c.err);
    assert.match((await curl(topo.client1, `http://inventory.local.${domain}/`)).out, /\n200$/);
    assert.equal(await gw.stop(), 0, `the gateway stops cleanly on SIGTERM; its log:\n${gw.logs().split('\n').slice(-12).join('\n')}`);
    gw = await startGateway();
    let ok = false;
    for (let i = 0; i < 30 && !ok; i++) {
      ok = /\n200$/.test((await curl(topo.client1, `http://inventory.local.${domain}/`, 1)).out);
      if (!ok) await new Promise((r) => setTimeout(r, 100));
    }
    const clientLog = () => readFileSync(join(home('alice'), 'tunnels', `${domain}.log`), 'utf8').split('\n').slice(-8).join('\n');
    assert.ok(ok, `client1 works after the restart\nclient log:\n${clientLog()}\ngateway log:\n${gw.logs().split('\n').slice(-8).join('\n')}`);
    assert.equal((await peersOnGateway()).length, 1, 'no stale peer came back');
  });

  it('lets a stock wg-quick peer in with an exported configuration', async () => {
    await login(topo.client2, 'alice2', 'alice');
    const file = join(dir, `${topo.prefix}q1.conf`);
    const e = await postern(topo.client2, 'alice2', ['connect', '--export-wireguard', file, '--no-dns']);
    assert.equal(e.code, 0, e.err);
    const conf = readFileSync(file, 'utf8');
    assert.match(conf, /\[Interface\]\nPrivateKey = \S+\nAddress = 100\.65\.\d+\.\d+\/32, [0-9a-f:]+\/128\nMTU = 1280/);
    assert.match(conf, /\[Peer\]\nPublicKey = \S+\nEndpoint = 198\.18\.0\.1:53820\nAllowedIPs = 100\.64\.0\.0\/10, [0-9a-f:]+::\/64\nPersistentKeepalive = 30/);
    const up = await topo.run(topo.client2, 'wg-quick', ['up', file]);
    assert.equal(up.code, 0, up.err);
    const svc = JSON.parse((await ctl(['get', 'service', 'inventory', '-o', 'json'])).out) as { status: { addresses: { dualStackIP: { ipv4: string } }[] } };
    const res = await curl(topo.client2, `http://${svc.status.addresses[0]!.dualStackIP.ipv4}/`);
    assert.equal(res.out, 'inventory says hello to alice\n\n200');
    await topo.run(topo.client2, 'wg-quick', ['down', file]);
  });
});
