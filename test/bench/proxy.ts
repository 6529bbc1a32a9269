/**
 * Proxy benchmarks (issue: identity-aware proxy), side by side in one run on loopback:
 *  (a) wrk straight to the upstream (nginx returning a small body);
 *  (b) nginx proxy_pass to it;
 *  (c) nginx auth_request to a small Node authorization endpoint, then proxy_pass — the
 *      external-authorization design of Pomerium, Oathkeeper and Envoy Gateway's ext-auth;
 *  ours: posternd's public listener (plaintext, as behind a TLS-terminating balancer) with
 *      bearer-token identity, a 3-condition CEL policy and header injection.
 * Also: this machine's own stalls (a busy loop, before any load); p99 added latency over (a) at
 * half our peak rate (an open-loop generator; beside it at the same rate (b) and (d), a bare Node
 * TCP relay, `relay.ts`); the same half-peak rule read against (b) and (d) at half of their own
 * peaks; the cost of one policy decision; and our rate with and without 1,000
 * more Services and 1,000 Policies, in one process, in pairs of runs (its peak rate, and its CPU
 * time per request at a fixed rate). Rates and latencies are
 * measured in rounds, every kind once per round, and counted from the rounds the host did not
 * disturb (`inRounds`); each rate comes with the CPU time per request of the process measured.
 * nginx runs one worker and posternd is one Node process, so each proxy gets one core; one more row
 * runs posternd with its public listener in two worker processes (`--proxy-workers 2`).
 * Every load run is bounded in time; everything started is stopped. Each run reports the
 * hypervisor's steal during it (`machine.ts`), which moves every row on this virtual machine.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createServer, get } from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { encodeYaml, type AnyResource } from '@postern/apis';
import { compileCel, decide, httpRequest, type PolicySource } from '@postern/policy';
import { childPids, freePort, runBin, spawnPosternd } from '../harness/index.js';
import type { BenchRow } from './control-plane.js';
import { withSteal } from './machine.js';

const run = promisify(execFile);
const seconds = Number(process.env.BENCH_SECONDS ?? 8);
const policyExpr = '"dev" in ctx.user.spec.groups && ctx.request.http.method == "GET" && ctx.request.http.path.startsWith("/api")';

/** A process's CPU time (user + system) so far, with all its descendants (proxy workers, nginx's worker), in ms. */
function cpuMs(pid: number): number {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return 0; // ended since it was listed
  }
  const fields = stat.split(') ')[1]!.split(' ');
  let ms = (Number(fields[11]) + Number(fields[12])) * 10; // utime and stime, in 1/100 s
  let children: number[] = [];
  try {
    children = childPids(pid);
  } catch {
    // ended since its stat was read: no children to count
  }
  for (const child of children) ms += cpuMs(child);
  return ms;
}

/** One wrk run: requests/s, p99, the host's steal meanwhile and, given a process, its CPU time per request (µs). */
interface WrkRun {
  rps: number;
  p99ms: number;
  steal: number;
  cpuUs: number | undefined;
}

/**
 * Requests/s and p99 of one wrk run (64 connections), after a 2 s warm-up run against the same
 * target that is not counted: connection set-up and, for Node, compiling the request path are
 * not what is measured (the same for nginx and for us).
 */
async function wrk(url: string, headers: Record<string, string> = {}, pid?: number): Promise<WrkRun> {
  const h = Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]);
  await run('wrk', ['-t1', '-c64', '-d2s', ...h, url], { timeout: 30_000 });
  const args = ['-t1', '-c64', `-d${seconds}s`, '--latency', ...h, url];
  const cpuBefore = pid ? cpuMs(pid) : 0;
  const { value: { stdout }, steal } = await withSteal(() => run('wrk', args, { timeout: (seconds + 30) * 1000 }));
  const cpu = pid ? cpuMs(pid) - cpuBefore : 0;
  const rps = Number(stdout.match(/Requests\/sec:\s+([\d.]+)/)?.[1]);
  const requests = Number(stdout.match(/(\d+) requests in/)?.[1]);
  const p99 = stdout.match(/99%\s+([\d.]+)(us|ms|s)/);
  const p99ms = p99 ? Number(p99[1]) * (p99[2] === 'us' ? 0.001 : p99[2] === 's' ? 1000 : 1) : NaN;
  if (!rps) throw new Error(`wrk gave no rate:\n${stdout}`);
  if (/Non-2xx or 3xx responses/.test(stdout)) {
    const sample = await run('curl', ['-s', '-i', ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), url]).then((r) => r.stdout, (e: Error) => e.message);
    throw new Error(`wrk saw errors against ${url}:\n${stdout}\none request now:\n${sample}`);
  }
  return { rps, p99ms, steal, cpuUs: pid && requests ? (cpu * 1000) / requests : undefined };
}

/** The middle value of runs (the mean of the two middle ones for an even number). */
const median = (xs: number[]): number => {
  const sorted = [...xs].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

/** A run counts toward a row when the host took at most this share of the machine's CPU time during it (steal, %). */
const quietSteal = 2;

/**
 * Runs of several kinds, one of each per round, back to back, until three rounds are quiet (each
 * of their runs saw ≤ `quietSteal`% steal) or `maxRounds` are done. Measured, a run at 10-30%
 * steal reads a rate well below and a p99 several times its quiet value, nginx's as much as
 * ours. The quiet rounds count; with fewer than three, all do and `which` says so. `list` shows
 * every round's value: a round left out in brackets with the steal that put it aside, a round
 * counted although not quiet with its steal after it.
 */
async function inRounds<K extends string, R extends { steal: number }>(runs: Record<K, () => Promise<R>>, maxRounds: number, opts: { alternate?: boolean } = {}) {
  type Round = Record<K, R>;
  const rounds: Round[] = [];
  const steal = (r: Round) => Math.max(...Object.values<R>(r).map((x) => x.steal));
  const quiet = (r: Round) => steal(r) <= quietSteal;
  const kinds = Object.keys(runs) as K[];
  while (rounds.length < maxRounds && rounds.filter(quiet).length < 3) {
    const round = {} as Round;
    // `alternate`: every other round runs the kinds in reverse order (A B, B A, ...).
    for (const k of opts.alternate && rounds.length % 2 ? [...kinds].reverse() : kinds) round[k] = await runs[k]();
    rounds.push(round);
  }
  const calm = rounds.filter(quiet);
  const counted = calm.length >= 3 ? calm : rounds;
  return {
    counted,
    which: counted === calm ? `median of the ${calm.length} rounds of ${rounds.length} with ≤ ${quietSteal}% steal` : `only ${calm.length} of ${rounds.length} rounds had ≤ ${quietSteal}% steal: median of all`,
    /** The median over the counted rounds. */
    med: (value: (r: Round) => number) => median(counted.map(value)),
    list: (value: (r: Round) => string) =>
      rounds.map((x) => (!counted.includes(x) ? `[${value(x)} at ${steal(x).toFixed(1)}% steal]` : quiet(x) ? value(x) : `${value(x)} (${steal(x).toFixed(1)}% steal)`)).join(', '),
  };
}

/**
 * p99 latency at a fixed rate, from the open-loop generator in its own process, in ms; the
 * machine's steal meanwhile; and how many requests it sent in all (its warm-up's included).
 */
async function fixedRateP99(url: string, rate: number, headers: Record<string, string> = {}): Promise<{ p99: number; steal: number; total: number }> {
  const script = join(import.meta.dirname, 'openloop.js');
  const args = [script, url, String(Math.round(rate)), String(seconds), JSON.stringify(headers)];
  const { value: { stdout }, steal } = await withSteal(() => run(process.execPath, args, { timeout: (seconds + 60) * 1000 }));
  const res = JSON.parse(stdout) as { sent: number; total: number; ok: number; p99: number };
  if (res.ok !== res.sent) throw new Error(`open-loop load saw ${res.sent - res.ok} failures against ${url}`);
  return { p99: res.p99, steal, total: res.total };
}

/** The bare Node TCP relay (`relay.ts`) in front of the upstream, in its own process: its port. */
function startRelay(upstreamPort: number): Promise<{ port: number; proc: ChildProcess }> {
  const proc = spawn(process.execPath, [join(import.meta.dirname, 'relay.js'), String(upstreamPort)], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    proc.once('exit', (code) => reject(new Error(`the relay exited ${code}`)));
    proc.stdout!.once('data', (d: Buffer) => resolve({ port: Number(d.toString().trim()), proc }));
  });
}

function startNginx(dir: string, conf: string): Promise<ChildProcess> {
  const file = join(dir, 'nginx.conf');
  writeFileSync(file, conf);
  const proc = spawn('nginx', ['-c', file, '-p', dir, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolve, reject) => {
    let err = '';
    proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    proc.once('exit', (code) => reject(new Error(`nginx exited ${code}: ${err}`)));
    setTimeout(() => resolve(proc), 500);
  });
}

/** The decision cost: our decide() on the bench policy vs the bare CEL evaluation inside it. */
function decisionBench(): BenchRow {
  const policies: PolicySource[] = [{ name: 'bench', attachedTo: 'Service/api.default', spec: { rules: [{ effect: 'ALLOW', priority: 0, condition: { match: policyExpr } }] } }];
  const user = { kind: 'User', metadata: { name: 'dana', uid: 'u' }, spec: { type: 'HUMAN', groups: ['dev', 'ops'] } };
  const makeCtx = () => ({ user, groups: [], request: { http: httpRequest({ method: 'GET', path: '/api/items', query: '', host: 'api', scheme: 'http', headers: { accept: '*/*' }, size: 0 }) } });
  const n = 200_000;
  for (let i = 0; i < 20_000; i++) decide(policies, makeCtx());
  let t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) if (decide(policies, makeCtx()).effect !== 'ALLOW') throw new Error('bench policy should allow');
  const ours = Number(process.hrtime.bigint() - t) / n;
  const program = compileCel(policyExpr);
  const activation = { ctx: makeCtx(), attrs: {} };
  for (let i = 0; i < 20_000; i++) program(activation);
  t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) program(activation);
  const bare = Number(process.hrtime.bigint() - t) / n;
  return {
    name: 'policy decision (3-condition CEL rule, ctx built per request)',
    ours: `${(ours / 1000).toFixed(2)} µs`,
    reference: `${(bare / 1000).toFixed(2)} µs (bare cel-js evaluation of the same expression on a ctx built once)`,
    ratio: `${(ours / bare).toFixed(2)}×`,
    target: '≤ 2 µs',
    pass: ours / 1000 <= 2,
  };
}

/** The bench's own resources: dana in group dev, and the Service with its 3-condition policy and an added header. */
function benchResources(upstreamPort: number): string {
  return `kind: Group
metadata: {name: dev}
---
kind: User
metadata: {name: dana}
spec: {type: HUMAN, groups: [dev]}
---
kind: Service
metadata: {name: api}
spec:
  isPublic: true
  config:
    upstream: {url: "http://127.0.0.1:${upstreamPort}"}
    http:
      header:
        addRequestHeaders: [{key: x-gateway, value: postern}]
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                match: '${policyExpr}'
`;
}

/**
 * posternd (one Node process, or with `--proxy-workers`) with the bench Service: bearer identity,
 * the 3-condition policy, a request header added. Returns it, a posternctl, and dana's token.
 */
async function startOurs(dir: string, upstreamPort: number, extra: string[]) {
  mkdirSync(dir, { recursive: true });
  // Its log (an access-log line per request) goes to a file, as nginx's does.
  const d = await spawnPosternd(['up', '--domain', 'bench.test', '--listen', '127.0.0.1:0', '--public-listen', '127.0.0.1:0', '--public-plaintext', ...extra], {
    cwd: dir,
    logFile: join(dir, 'posternd.log'),
    // Node flags for posternd alone, to compare tunings (e.g. --max-semi-space-size=32).
    ...(process.env.BENCH_POSTERND_NODE_OPTIONS ? { env: { NODE_OPTIONS: process.env.BENCH_POSTERND_NODE_OPTIONS } } : {}),
  });
  const env = { POSTERN_CONFIG_DIR: join(dir, 'home') };
  const ctl = async (args: string[], stdin?: string) => {
    const r = await runBin('posternctl', ['--domain', 'bench.test', ...args], { cwd: dir, env, ...(stdin !== undefined ? { stdin } : {}) });
    if (r.code !== 0) throw new Error(r.err);
    return r.out;
  };
  try {
    const login = await runBin('postern', ['login', '--domain', 'bench.test', '--api', d.address, '--auth-token', d.rootToken!], { cwd: dir, env });
    if (login.code !== 0) throw new Error(login.err);
    await ctl(['apply', '-'], benchResources(upstreamPort));
    const token = (await ctl(['create', 'credential', '--user', 'dana', '--type', 'access-token'])).trim();
    return { d, ctl, token };
  } catch (err) {
    await d.stop();
    throw err;
  }
}

/**
 * Waits until a process has finished what a change set off (the controller giving 1,000 new
 * Services their addresses goes on for seconds after the apply returns): its CPU time grows by
 * less than 30 ms over half a second. Measuring before that measures the controller too.
 */
async function settled(pid: number): Promise<void> {
  const deadline = Date.now() + 120_000;
  let before = cpuMs(pid);
  for (;;) {
    await new Promise((r) => setTimeout(r, 500));
    const now = cpuMs(pid);
    if (now - before < 30) return;
    if (Date.now() > deadline) throw new Error(`posternd (pid ${pid}) was still busy two minutes after a change`);
    before = now;
  }
}

/** The machine's own stalls, measured before any load (`stalls.ts`): context for the latency rows. */
async function stallsRow(): Promise<BenchRow> {
  const { stdout } = await run(process.execPath, [join(import.meta.dirname, 'stalls.js'), '5'], { timeout: 60_000 });
  const s = JSON.parse(stdout) as { seconds: number; over1ms: number; over5ms: number; longestMs: number; stalledMs: number };
  return {
    name: `this machine's own stalls: a busy loop in its own process, ${s.seconds} s before any load, counts the gaps > 1 ms between two clock readings`,
    ours: `${s.over1ms} gaps > 1 ms, ${s.over5ms} > 5 ms, longest ${s.longestMs} ms`,
    reference: '—',
    ratio: `${((s.stalledMs / (s.seconds * 1000)) * 100).toFixed(2)}% of the time stopped`,
    target: '(informative)',
    pass: undefined,
  };
}

export async function proxyBenchmarks(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [decisionBench(), await stallsRow()];
  const dir = mkdtempSync(join(tmpdir(), 'postern-bench-proxy-'));
  const [pUp, pPass, pAuth, pAuthSvc] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const tokens = new Map<string, string>([['bench-token', 'dana']]);
  const authSvc = createServer((req, res) => {
    const user = tokens.get(String(req.headers.authorization ?? '').replace(/^Bearer /, ''));
    res.writeHead(user ? 200 : 401, user ? { 'x-user': user } : {});
    res.end();
  });
  await new Promise<void>((r) => authSvc.listen(pAuthSvc, '127.0.0.1', r));
  const nginx = await startNginx(
    dir,
    `worker_processes 1;
error_log ${dir}/error.log;
pid ${dir}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  # The proxies (b) and (c) log each request to a file, nginx's default, as posternd does; the
  # upstream (a) serves everyone and logs nothing.
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream up { server 127.0.0.1:${pUp}; keepalive 128; }
  upstream authsvc { server 127.0.0.1:${pAuthSvc}; keepalive 128; }
  server { listen 127.0.0.1:${pUp}; location / { return 200 "hello from the upstream\\n"; } }
  server { listen 127.0.0.1:${pPass}; access_log ${dir}/pass.log;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Gateway nginx; } }
  server { listen 127.0.0.1:${pAuth}; access_log ${dir}/auth.log;
    location / { auth_request /_auth; auth_request_set $user $upstream_http_x_user; proxy_set_header X-User $user; proxy_set_header X-Gateway nginx;
                 proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_auth { internal; proxy_pass http://authsvc; proxy_http_version 1.1; proxy_set_header Connection "";
                        proxy_pass_request_body off; proxy_set_header Content-Length ""; proxy_set_header X-Original-URI $request_uri; } }
}
`,
  );
  const posternd = await startOurs(join(dir, 'one'), pUp, []);
  let relayProc: ChildProcess | undefined;
  try {
    const relay = await startRelay(pUp);
    relayProc = relay.proc;
    const { token } = posternd;
    const ours = `http://${posternd.d.publicAddress}/api/items`;
    const bearer = { authorization: `Bearer ${token}`, Host: 'api.bench.test' };
    let peak = 0;
    /** The references' own peaks (wrk), for reading the half-peak latency rule against them too. */
    let peakB = 0;
    let peakD = 0;
    // Warm every path once.
    for (const [url, h] of [[`http://127.0.0.1:${pUp}/api/items`, {}], [`http://127.0.0.1:${pPass}/api/items`, {}], [`http://127.0.0.1:${relay.port}/api/items`, {}], [`http://127.0.0.1:${pAuth}/api/items`, { authorization: 'Bearer bench-token' }], [ours, bearer]] as const) {
      const status = await new Promise<number>((resolve, reject) => get(url, { headers: h as Record<string, string> }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject));
      if (status !== 200) throw new Error(`${url} answered ${status}`);
    }
    // The same with the public listener in 2 worker processes (nginx keeps its one worker),
    // alive beside the one-process posternd so that both are measured in every round.
    const workers = await startOurs(join(dir, 'workers'), pUp, ['--proxy-workers', '2']);
    const rate = (rps: number) => `${Math.round(rps).toLocaleString('en')} req/s`;
    const cpu = (r: WrkRun) => (r.cpuUs === undefined ? '' : `, ${r.cpuUs.toFixed(0)} µs CPU`);
    const nginxPid = nginx.pid!;
    try {
      // Throughput rounds: (a), (b), (c), ours and ours in two workers, one wrk run each. The
      // ratios are the median of each counted round's own ratio (its runs within a minute).
      // The CPU time per request of the process measured is printed beside each rate: steal is
      // not charged to a process, and it moved less than the rate (a smoke run: 8,283-15,352
      // req/s, 103-70 µs). nginx's worker also serves (a): its hop is its CPU per request in (b)
      // less that in (a).
      const t = await inRounds(
        {
          a: () => wrk(`http://127.0.0.1:${pUp}/api/items`, {}, nginxPid),
          b: () => wrk(`http://127.0.0.1:${pPass}/api/items`, {}, nginxPid),
          c: () => wrk(`http://127.0.0.1:${pAuth}/api/items`, { authorization: 'Bearer bench-token' }),
          d: () => wrk(`http://127.0.0.1:${relay.port}/api/items`, {}, relay.proc.pid),
          ours: () => wrk(ours, bearer, posternd.d.proc.pid),
          workers: () => wrk(`http://${workers.d.publicAddress}/api/items`, { authorization: `Bearer ${workers.token}`, Host: 'api.bench.test' }, workers.d.proc.pid),
        },
        5,
      );
      const rates = (k: 'a' | 'b' | 'c' | 'd' | 'ours' | 'workers', withCpu = false) => `${rate(t.med((r) => r[k].rps))} (runs: ${t.list((r) => `${rate(r[k].rps)}${withCpu ? cpu(r[k]) : ''}`)})`;
      const hop = t.med((r) => (r.b.cpuUs ?? NaN) - (r.a.cpuUs ?? NaN));
      const against = (what: string, k: 'ours' | 'workers') => {
        const overC = t.med((r) => r[k].rps / r.c.rps);
        const overB = t.med((r) => r[k].rps / r.b.rps);
        const oursCpu = t.med((r) => r[k].cpuUs ?? NaN);
        rows.push({
          name: `${what} vs nginx auth_request (c) (${t.which})`,
          ours: `${rates(k, true)}`,
          reference: `(c) ${rates('c')}`,
          ratio: `${overC.toFixed(2)}×`,
          target: '≥ 1.5× (c)',
          pass: overC >= 1.5,
        });
        rows.push({
          name: `${what} vs nginx proxy_pass (b) (${t.which})`,
          ours: `${rate(t.med((r) => r[k].rps))}, ${oursCpu.toFixed(0)} µs CPU per request`,
          reference: `(b) ${rates('b')}, nginx's hop ${hop.toFixed(0)} µs CPU per request; (a) direct ${rates('a')}; (d) a bare Node TCP relay ${rates('d', true)}`,
          ratio: `${(overB * 100).toFixed(0)}% of (b)`,
          target: '≥ 50% of (b)',
          pass: overB >= 0.5,
        });
      };
      against('requests/s, bearer identity + 3-condition CEL + header injection, one process,', 'ours');
      against('requests/s with `--proxy-workers 2` (two worker processes; nginx keeps one)', 'workers');
      peak = t.med((r) => r.ours.rps);
      peakB = t.med((r) => r.b.rps);
      peakD = t.med((r) => r.d.rps);
    } finally {
      await workers.d.stop();
    }
    // Latency rows: rounds of (a), (b), (d) and ours back to back at one rate, counted as above.
    // nginx proxy_pass (b) and the bare Node relay (d) are there to read the target against: what
    // a proxy written in C adds on this machine at that rate, and what Node's runtime adds under
    // any proxy written for it.
    const latencyRow = async (what: string, at: number, target: string, maxRounds: number): Promise<BenchRow> => {
      const l = await inRounds(
        {
          a: () => fixedRateP99(`http://127.0.0.1:${pUp}/api/items`, at),
          b: () => fixedRateP99(`http://127.0.0.1:${pPass}/api/items`, at),
          d: () => fixedRateP99(`http://127.0.0.1:${relay.port}/api/items`, at),
          ours: () => fixedRateP99(ours, at, bearer),
        },
        maxRounds,
      );
      const [r, b, d, o] = (['a', 'b', 'd', 'ours'] as const).map((k) => l.med((x) => x[k].p99)) as [number, number, number, number];
      const list = (k: 'a' | 'b' | 'd' | 'ours') => l.list((x) => x[k].p99.toFixed(1));
      const added = (x: number) => `${x - r >= 0 ? '+' : ''}${(x - r).toFixed(2)} ms`;
      return {
        name: `${what} (open loop; ${l.which})`,
        ours: `p99 ${o.toFixed(2)} ms (rounds: ${list('ours')})`,
        reference: `(a) p99 ${r.toFixed(2)} ms (rounds: ${list('a')}); at the same rate (b) p99 ${b.toFixed(2)} ms, ${added(b)} (rounds: ${list('b')}); (d) a bare Node TCP relay p99 ${d.toFixed(2)} ms, ${added(d)} (rounds: ${list('d')})`,
        ratio: added(o),
        target,
        pass: o - r <= 2,
      };
    };
    const half = peak / 2;
    rows.push(await latencyRow(`p99 latency added over direct (a), at half our peak (${Math.round(half).toLocaleString('en')} req/s)`, half, '≤ +2 ms', 6));
    // The half-peak rule read against the references themselves: nginx (b) at half of *its* peak,
    // the bare Node relay (d) at half of *its* peak, each beside (a) at the same rate, in rounds.
    // No target: it says what the rule asks of a proxy on this machine, under the same generator.
    {
      const [hb, hd] = [peakB / 2, peakD / 2];
      const l = await inRounds(
        {
          aAtB: () => fixedRateP99(`http://127.0.0.1:${pUp}/api/items`, hb),
          b: () => fixedRateP99(`http://127.0.0.1:${pPass}/api/items`, hb),
          aAtD: () => fixedRateP99(`http://127.0.0.1:${pUp}/api/items`, hd),
          d: () => fixedRateP99(`http://127.0.0.1:${relay.port}/api/items`, hd),
        },
        6,
      );
      const added = (k: 'b' | 'd', ref: 'aAtB' | 'aAtD') => l.med((x) => x[k].p99 - x[ref].p99);
      const list = (k: 'b' | 'd', ref: 'aAtB' | 'aAtD') => l.list((x) => `${x[k].p99.toFixed(1)} − ${x[ref].p99.toFixed(1)}`);
      const sign = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(2)} ms`;
      rows.push({
        name: `the same rule for the references: p99 added over (a) by each at half of its own peak (open loop; ${l.which})`,
        ours: '—',
        reference: `(b) nginx at ${rate(hb)}: ${sign(added('b', 'aAtB'))} (rounds, (b) − (a) p99 in ms: ${list('b', 'aAtB')}); (d) a bare Node TCP relay at ${rate(hd)}: ${sign(added('d', 'aAtD'))} (rounds: ${list('d', 'aAtD')})`,
        ratio: `(b) ${sign(added('b', 'aAtB'))}, (d) ${sign(added('d', 'aAtD'))}`,
        target: '(informative: ≤ +2 ms is the target ours is held to)',
        pass: undefined,
      });
    }
    // The same at a light 1,000 req/s, where the load generator does not compete for the 2 cores.
    rows.push(await latencyRow('p99 latency added over direct (a), at 1,000 req/s', 1000, '(informative)', 4));
    // 1,000 more Services and 1,000 Policies, each Service with its own policy attached.
    const more: AnyResource[] = [];
    for (let i = 0; i < 1000; i++) {
      more.push({ kind: 'Policy', metadata: { name: `p-${i}` }, spec: { rules: [{ effect: 'ALLOW', priority: 0, condition: { match: `"team-${i}" in ctx.user.spec.groups && ctx.request.http.method == "GET"` } }] } });
      more.push({ kind: 'Service', metadata: { name: `svc-${i}` }, spec: { isPublic: i % 2 === 0, config: { upstream: { url: `http://127.0.0.1:${pUp}` } }, authorization: { policies: [`p-${i}`] } } });
    }
    const file = join(dir, 'more.yaml');
    writeFileSync(file, encodeYaml(more));
    // One fresh posternd, measured in turns with and without the 1,000 more: applied, taken away
    // again (`apply --prune` of the bench's own resources and one of the Policies, which keeps the
    // rest of that file's kinds out), applied again, and so on, in pairs of runs (below). Two
    // processes side by side differed by up to 20% with the same
    // configuration (one was steadily slower: its place on the two cores, not its work), and one
    // process before and after, minutes apart, moved by ±15% on its own: both more than the target.
    const back = join(dir, 'back.yaml');
    writeFileSync(back, `${benchResources(pUp)}---\n${encodeYaml([more[0]!])}`);
    const many = await startOurs(join(dir, 'many'), pUp, []);
    try {
      const manyUrl = `http://${many.d.publicAddress}/api/items`;
      const manyHeaders = { authorization: `Bearer ${many.token}`, Host: 'api.bench.test' };
      const measure = () => wrk(manyUrl, manyHeaders, many.d.proc.pid);
      const change = async (args: string[]) => {
        await many.ctl(args);
        await settled(many.d.proc.pid!);
      };
      // Pairs of runs, A B, B A, A B, ... (A: one Service, B: with the 1,000), so a drift of the
      // machine weighs on both alike; each pair's two runs are back to back, and the drop is the
      // median of the pairs' own. Pairs are rounds of two, counted as above.
      let configured: 'one' | 'loaded' = 'one';
      const configure = async (want: 'one' | 'loaded') => {
        if (want === configured) return;
        if (want === 'loaded') await change(['apply', file]);
        else {
          await change(['apply', '--prune', back]);
          const services = (JSON.parse(await many.ctl(['get', 'service', '-o', 'json'])) as { items: unknown[] }).items;
          if (services.length !== 1) throw new Error(`apply --prune left ${services.length} Services, not 1`);
        }
        configured = want;
      };
      const pairs = await inRounds({ one: () => configure('one').then(measure), loaded: () => configure('loaded').then(measure) }, 5, { alternate: true });
      const drop = pairs.med((x) => 1 - x.loaded.rps / x.one.rps);
      const cpuGrowth = pairs.med((x) => (x.loaded.cpuUs ?? NaN) / (x.one.cpuUs ?? NaN) - 1);
      const list = (k: 'one' | 'loaded') => pairs.list((x) => `${rate(x[k].rps)}${cpu(x[k])}`);
      rows.push({
        name: `requests/s of one Service with 1,000 more Services and 1,000 Policies configured (one process, in pairs of runs with and without them; ${pairs.which.replaceAll('rounds', 'pairs')})`,
        ours: `${rate(pairs.med((x) => x.loaded.rps))} (runs: ${list('loaded')})`,
        reference: `${rate(pairs.med((x) => x.one.rps))} with 1 Service (runs: ${list('one')}); CPU per request ${cpuGrowth >= 0 ? '+' : ''}${(cpuGrowth * 100).toFixed(1)}% with the 1,000`,
        ratio: `${Math.abs(drop * 100).toFixed(1)}% ${drop >= 0 ? 'drop' : 'gain'}`,
        target: '< 10% drop',
        pass: drop < 0.1,
      });
      // The same question at a fixed rate: the CPU time per request of the same process, in
      // open loop at 5,000 req/s, in pairs as above. Measured, it moved far less than the peak
      // rate (4 pairs by hand: 83-114 µs, no pair higher with the 1,000 by more than 1%), and
      // while a process is CPU-bound its rate is the inverse of it: < 10% fewer requests/s is
      // < 11.1% more CPU per request.
      const fixed = 5000;
      const atFixedRate = async () => {
        const pid = many.d.proc.pid!;
        const before = cpuMs(pid);
        const r = await fixedRateP99(manyUrl, fixed, manyHeaders);
        // The CPU time covers the generator's warm-up too: divided by every request it sent.
        return { ...r, cpuUs: ((cpuMs(pid) - before) * 1000) / r.total };
      };
      const atRate = await inRounds({ one: () => configure('one').then(atFixedRate), loaded: () => configure('loaded').then(atFixedRate) }, 5, { alternate: true });
      const growth = atRate.med((x) => x.loaded.cpuUs / x.one.cpuUs - 1);
      const us = (k: 'one' | 'loaded') => `${atRate.med((x) => x[k].cpuUs).toFixed(1)} µs (runs: ${atRate.list((x) => `${x[k].cpuUs.toFixed(1)} µs`)})`;
      rows.push({
        name: `CPU time per request of one Service with 1,000 more Services and 1,000 Policies configured, at a fixed ${fixed.toLocaleString('en')} req/s (open loop, one process, in pairs as above; ${atRate.which.replaceAll('rounds', 'pairs')})`,
        ours: us('loaded'),
        reference: `${us('one')} with 1 Service`,
        ratio: `${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)}%`,
        target: '< +11.1% (< 10% fewer requests/s when CPU-bound)',
        pass: growth < 1 / 0.9 - 1,
      });
    } finally {
      await many.d.stop();
    }
  } finally {
    await posternd.d.stop();
    relayProc?.kill();
    nginx.kill('SIGQUIT');
    authSvc.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}
