/**
 * Control-plane benchmarks (issue: control plane foundation), each beside a reference run in the
 * same script, reported as ratios:
 *  1. `posternctl apply` of 1,000 Services (the real binary) vs the store writing the same 1,000
 *     resources in one batch directly — on PGlite and on PostgreSQL. Target ≤ 5 s.
 *  2. Watch latency, commit → watcher callback, on PostgreSQL vs a bare LISTEN/NOTIFY round trip
 *     on the same server. Target p99 ≤ 20 ms.
 *  3. Core API `Get` on a warm connection against a separate posternd process (one core) vs a bare
 *     grpc-js unary echo over the same TLS. Target ≥ 2,000 calls/s.
 * Every loop is bounded in count and time; everything started is stopped.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server, ServerCredentials, credentials, makeGenericClientConstructor, type Client } from '@grpc/grpc-js';
import { encodeYaml, type AnyResource } from '@postern/apis';
import { ApiClient } from '@postern/apiserver';
import { clusterTls } from '@postern/cluster';
import { openStore } from '@postern/store';
import pg from 'pg';
import { runBin, spawnPosternd, TestPostgres } from '../harness/index.js';
import { fetchClusterCa } from '@postern/cli';

export interface BenchRow {
  name: string;
  ours: string;
  reference: string;
  ratio: string;
  target: string;
  /** Whether the target is met; undefined for a row that only informs (no target). */
  pass: boolean | undefined;
}

const services = (n: number, prefix: string): AnyResource[] =>
  Array.from({ length: n }, (_, i) => ({
    kind: 'Service',
    metadata: { name: `${prefix}-${i}` },
    spec: {
      mode: 'HTTP',
      port: 80,
      config: { upstream: { url: `http://127.0.0.1:${10000 + (i % 1000)}` } },
      authorization: { inlinePolicies: [{ spec: { rules: [{ effect: 'ALLOW', condition: { match: '"dev" in ctx.user.spec.groups' } }] } }] },
    },
  }));

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;

async function withPosternd<T>(args: string[], fn: (address: string, token: string, dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-bench-'));
  const d = await spawnPosternd(['up', '--domain', 'bench.test', '--listen', '127.0.0.1:0', '--public-listen', 'off', ...args], { cwd: dir });
  try {
    return await fn(d.address, d.rootToken!, dir);
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function applyBench(label: string, database: string | undefined, referenceDb: () => Promise<{ url?: string; dataDir?: string; cleanup(): Promise<void> }>): Promise<BenchRow> {
  const ours = await withPosternd(database ? ['--database', database] : [], async (address, token, dir) => {
    const env = { POSTERN_CONFIG_DIR: join(dir, 'home') };
    const login = await runBin('postern', ['login', '--domain', 'bench.test', '--api', address, '--auth-token', token], { cwd: dir, env });
    if (login.code !== 0) throw new Error(login.err);
    const file = join(dir, 'services.yaml');
    writeFileSync(file, encodeYaml(services(1000, 'svc')));
    const t0 = performance.now();
    const r = await runBin('posternctl', ['--domain', 'bench.test', 'apply', file], { cwd: dir, env });
    const ms = performance.now() - t0;
    if (r.code !== 0 || r.out.trim().split('\n').length !== 1000) throw new Error(`apply failed: ${r.err}`);
    return ms;
  });
  const ref = await referenceDb();
  const store = await openStore(ref.url ? { database: ref.url } : { dataDir: ref.dataDir! });
  const t0 = performance.now();
  await store.batch(services(1000, 'ref').map((resource) => ({ op: 'create' as const, resource })));
  const refMs = performance.now() - t0;
  await store.close();
  await ref.cleanup();
  return {
    name: `apply 1,000 Services (${label})`,
    ours: `${(ours / 1000).toFixed(2)} s`,
    reference: `${(refMs / 1000).toFixed(2)} s (store batch, no CLI/API)`,
    ratio: `${(ours / refMs).toFixed(1)}× the bare write`,
    target: '≤ 5 s',
    pass: ours <= 5000,
  };
}

async function watchBench(url: string): Promise<BenchRow> {
  const n = 2000;
  // Reference: a bare LISTEN/NOTIFY round trip on the same server.
  const listener = new pg.Client({ connectionString: url });
  const sender = new pg.Client({ connectionString: url });
  await listener.connect();
  await sender.connect();
  await listener.query('LISTEN bench');
  const refLat: number[] = [];
  for (let i = 0; i < n; i++) {
    const got = new Promise<void>((resolve) => listener.once('notification', () => resolve()));
    const t0 = performance.now();
    await sender.query("SELECT pg_notify('bench', 'x')");
    await got;
    // Same measure as ours: from before the statement is sent to the listener's callback.
    refLat.push(performance.now() - t0);
  }
  await listener.end();
  await sender.end();
  // Ours: a store write committed by one store, seen by another store's watch (two "replicas").
  const writer = await openStore({ database: url });
  const reader = await openStore({ database: url });
  const lat: number[] = [];
  let resolveEv: (() => void) | undefined;
  const watch = reader.watch({ kinds: ['Group'] }, () => resolveEv?.());
  await new Promise((r) => setTimeout(r, 200));
  const deadline = Date.now() + 60_000;
  for (let i = 0; i < n && Date.now() < deadline; i++) {
    const seen = new Promise<void>((resolve) => (resolveEv = resolve));
    // From before the write is sent: the commit happens somewhere inside, so this is an upper bound.
    const t0 = performance.now();
    await writer.create({ kind: 'Group', metadata: { name: `w-${i}` }, spec: {} });
    await seen;
    lat.push(performance.now() - t0);
  }
  watch.close();
  await writer.close();
  await reader.close();
  lat.sort((a, b) => a - b);
  refLat.sort((a, b) => a - b);
  const p99 = pct(lat, 99);
  return {
    name: `watch latency, write sent → other replica's callback (PostgreSQL, ${lat.length} events)`,
    ours: `p50 ${pct(lat, 50).toFixed(2)} ms, p99 ${p99.toFixed(2)} ms`,
    reference: `bare NOTIFY round trip p50 ${pct(refLat, 50).toFixed(2)} ms, p99 ${pct(refLat, 99).toFixed(2)} ms`,
    ratio: `p99 ${(p99 / pct(refLat, 99)).toFixed(1)}×`,
    target: 'p99 ≤ 20 ms',
    pass: p99 <= 20,
  };
}

async function getBench(): Promise<BenchRow> {
  const seconds = 5;
  const concurrency = 32;
  const load = async (call: () => Promise<unknown>) => {
    for (let i = 0; i < 200; i++) await call(); // warm-up
    let count = 0;
    const end = performance.now() + seconds * 1000;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) {
          await call();
          count++;
        }
      }),
    );
    return count / seconds;
  };
  const ours = await withPosternd([], async (address, token) => {
    {
      const ca = (await fetchClusterCa(address)).pem;
      const c0 = new ApiClient({ address, ca, serverName: 'api.bench.test' });
      const t = await c0.authenticateWithAuthToken(token);
      c0.close();
      const c = new ApiClient({ address, ca, serverName: 'api.bench.test', token: () => t.accessToken });
      await c.create({ kind: 'Group', metadata: { name: 'bench' }, spec: {} });
      const rate = await load(() => c.get('Group', 'bench'));
      c.close();
      return rate;
    }
  });
  // Reference: a bare grpc-js unary echo with the same TLS, in a child-free server in this process.
  const store = await openStore({});
  const tls = await clusterTls(store, 'bench.test', ['api.bench.test', '127.0.0.1'], new Date());
  await store.close();
  const def = {
    echo: {
      path: '/bench.Echo/Echo',
      requestStream: false,
      responseStream: false,
      requestSerialize: (v: Buffer) => v,
      requestDeserialize: (v: Buffer) => v,
      responseSerialize: (v: Buffer) => v,
      responseDeserialize: (v: Buffer) => v,
    },
  };
  const server = new Server();
  server.addService(def, { echo: (call: { request: Buffer }, cb: (e: null, v: Buffer) => void) => cb(null, call.request) } as never);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createSsl(null, [{ private_key: Buffer.from(tls.key), cert_chain: Buffer.from(tls.cert) }]), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const Echo = makeGenericClientConstructor(def, 'Echo');
  const client = new Echo(`127.0.0.1:${port}`, credentials.createSsl(Buffer.from(tls.caPem)), { 'grpc.ssl_target_name_override': 'api.bench.test' }) as unknown as Client & { echo: (b: Buffer, cb: (e: unknown, v: Buffer) => void) => void };
  const payload = Buffer.alloc(400, 1);
  const ref = await load(() => new Promise((resolve, reject) => client.echo(payload, (e, v) => (e ? reject(e) : resolve(v)))));
  client.close();
  server.forceShutdown();
  return {
    name: 'Core API Get, warm connection, 32 in flight (posternd in its own process)',
    ours: `${Math.round(ours).toLocaleString('en')} calls/s`,
    reference: `${Math.round(ref).toLocaleString('en')} calls/s (bare gRPC echo, same TLS, in-process)`,
    ratio: `${((ours / ref) * 100).toFixed(0)}% of bare gRPC`,
    target: '≥ 2,000 calls/s',
    pass: ours >= 2000,
  };
}

export async function controlPlaneBenchmarks(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const pgSrv = await TestPostgres.create();
  try {
    rows.push(
      await applyBench('PGlite', undefined, async () => {
        const dir = mkdtempSync(join(tmpdir(), 'postern-bench-ref-'));
        return { dataDir: dir, cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
      }),
    );
    const oursDb = await pgSrv.createDatabase('bench_apply');
    const refDb = await pgSrv.createDatabase('bench_apply_ref');
    rows.push(await applyBench('PostgreSQL', oursDb, async () => ({ url: refDb, cleanup: async () => {} })));
    rows.push(await watchBench(await pgSrv.createDatabase('bench_watch')));
  } finally {
    await pgSrv.destroy();
  }
  rows.push(await getBench());
  return rows;
}
