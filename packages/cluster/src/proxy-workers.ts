import cluster, { type Worker } from 'node:cluster';
import { fileURLToPath } from 'node:url';
import type { AnyResource } from '@postern/apis';
import type { StoredKey } from '@postern/authserver';
import { LocalRateCounter, proxyCacheKinds } from '@postern/proxy';
import type { ResourceCache, WatchEvent } from '@postern/store';
import type { Logger } from 'pino';

/** A command every worker must answer: who still owes an answer, and the first port one gave. */
interface Pending {
  owing: Set<Worker>;
  replied: boolean;
  port?: number;
  resolve: (port: number) => void;
  reject: (err: Error) => void;
}

/** What the primary tells a proxy worker. */
/** A Service's listener on this host (tunnel side): `listenService` in every worker. */
export interface ServiceListener {
  fullName: string;
  host: string;
  port: number;
}

export type ToWorker =
  | { t: 'init'; domain: string; public?: { host: string; port: number; plaintext: boolean; fallback?: { key: string; cert: string } }; services: ServiceListener[]; items: AnyResource[]; version: string; keys: StoredKey[]; upstreamTimeoutMs?: number }
  | { t: 'listen'; id: number; service: ServiceListener }
  | { t: 'unlisten'; id: number; fullName: string; host: string }
  | { t: 'event'; ev: WatchEvent }
  | { t: 'resync'; items: AnyResource[]; version: string }
  | { t: 'keys'; keys: StoredKey[] }
  | { t: 'cert'; id: number; key?: string; cert?: string; error?: string }
  | { t: 'rate'; id: number; start: number; count: number };

/** What a proxy worker asks of the primary. */
export type FromWorker = { t: 'ready' } | { t: 'listening'; port: number | undefined } | { t: 'done'; id: number; port?: number; error?: string } | { t: 'cert'; id: number; name: string } | { t: 'rate'; id: number; key: string; windowMs: number; now: number };

export interface ProxyWorkersOptions {
  count: number;
  domain: string;
  /** The public listener, if this host has one. */
  public?: { host: string; port: number; plaintext: boolean };
  /** The primary's cache (at least the proxy's kinds): the workers get a copy and every change. */
  cache: ResourceCache;
  /** The signing keys now; workers get only their public halves. */
  keys: () => readonly StoredKey[];
  /** Server certificates for public host names, signed by the cluster CA (which stays here). */
  certFor?: (name: string) => Promise<{ key: string; cert: string }>;
  upstreamTimeoutMs?: number;
  logger: Logger;
}

const publicOnly = (keys: readonly StoredKey[]): StoredKey[] => keys.map((k) => ({ ...k, privateKeyPem: '' }));
/** Workers get the kinds the proxy reads, nothing more (no Credentials, for one). */
const proxyKinds = new Set<string>(proxyCacheKinds);

/**
 * The proxy's listeners — the public one and every Service's — served by several processes
 * (`posternd up --proxy-workers N`): one Node process forwards at most ~20,000 requests/s, so the
 * request path scales with cores this way.
 * Workers share the listening socket (the kernel spreads connections), hold a copy of the cache
 * fed from here over IPC (no database connection of their own, so this works on PGlite too),
 * verify tokens with the public keys only, ask here for TLS certificates (the CA key never leaves
 * this process) and count rate limits here, so a limit holds across workers. A worker that dies
 * is started again.
 */
export class ProxyWorkers {
  private readonly ready = new Set<Worker>();
  private readonly counter = new LocalRateCounter();
  private unsubscribe: (() => void) | undefined;
  private closing = false;
  /** The public port the workers share (known once the first listens). */
  port: number | undefined;
  /** Service listeners every worker holds, also given to a worker started later. */
  private readonly services = new Map<string, ServiceListener>();
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  constructor(private readonly opts: ProxyWorkersOptions) {}

  /** Starts the workers; resolves with the public port they share (undefined without a public listener). */
  async start(): Promise<number | undefined> {
    // Shared socket, accepted by the workers themselves: the primary is busy with the database.
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({ exec: fileURLToPath(new URL('./proxy-worker.js', import.meta.url)), args: [], silent: false });
    this.unsubscribe = this.opts.cache.onChange((ev) => {
      if (ev.type === 'RESYNC') this.broadcast({ t: 'resync', ...this.snapshot() });
      else if (proxyKinds.has(ev.resource.kind)) this.broadcast({ t: 'event', ev });
    });
    const ports = await Promise.all(Array.from({ length: this.opts.count }, () => this.fork()));
    this.port = ports[0];
    return this.port;
  }

  /** A Service listener in every worker (they share the socket); resolves with its port. */
  listenService(fullName: string, host: string, port: number): Promise<number> {
    const service = { fullName, host, port };
    this.services.set(`${fullName}|${host}`, service);
    return this.everyWorker((id) => ({ t: 'listen', id, service }));
  }

  async unlistenService(fullName: string, host: string): Promise<void> {
    this.services.delete(`${fullName}|${host}`);
    await this.everyWorker((id) => ({ t: 'unlisten', id, fullName, host }));
  }

  /** Sends a command to every worker and waits until all have done it. */
  private everyWorker(message: (id: number) => ToWorker): Promise<number> {
    const id = this.nextId++;
    const workers = [...this.ready].filter((w) => w.isConnected());
    if (workers.length === 0) return Promise.reject(new Error('no proxy worker is running'));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { owing: new Set(workers), replied: false, resolve, reject });
      for (const w of workers) w.send(message(id));
    });
  }

  private snapshot(): { items: AnyResource[]; version: string } {
    const { items, version } = this.opts.cache.snapshot();
    return { items: items.filter((r) => proxyKinds.has(r.kind)), version };
  }

  /** New signing keys (after a rotation). */
  setKeys(keys: readonly StoredKey[]): void {
    this.broadcast({ t: 'keys', keys: publicOnly(keys) });
  }

  private broadcast(m: ToWorker): void {
    for (const w of this.ready) if (w.isConnected()) w.send(m);
  }

  /** `w` has answered command `id` (or is gone): settle it once no worker owes an answer. */
  private answered(id: number, p: Pending, w: Worker): void {
    if (!p.owing.delete(w) || p.owing.size > 0) return;
    this.pending.delete(id);
    if (p.replied) p.resolve(p.port ?? 0);
    else p.reject(new Error('the proxy workers ended before answering'));
  }

  private fork(): Promise<number | undefined> {
    const o = this.opts;
    const w = cluster.fork();
    // A send to a worker that is going away fails; its 'exit' handles the rest.
    w.on('error', (err: Error) => o.logger.debug({ worker: w.process.pid, err: err.message }, 'proxy worker channel error'));
    return new Promise((resolve, reject) => {
      let up = false;
      w.on('message', (m: FromWorker) => {
        if (m.t === 'ready') {
          // Sent once its handler is in place ('online' comes before its modules load, and a
          // message sent then would be lost).
          void (async () => {
            const pub = o.public;
            const fallback = !pub || pub.plaintext || !o.certFor ? undefined : await o.certFor(o.domain);
            // The copy and the events after it go down the same ordered channel: nothing is missed.
            w.send({
              t: 'init',
              domain: o.domain,
              ...(pub ? { public: { host: pub.host, port: this.port ?? pub.port, plaintext: pub.plaintext, ...(fallback ? { fallback } : {}) } } : {}),
              services: [...this.services.values()],
              ...this.snapshot(),
              keys: publicOnly(o.keys()),
              ...(o.upstreamTimeoutMs ? { upstreamTimeoutMs: o.upstreamTimeoutMs } : {}),
            } satisfies ToWorker);
            this.ready.add(w);
          })().catch(reject);
        } else if (m.t === 'listening') {
          up = true;
          o.logger.info({ worker: w.process.pid, ...(m.port ? { port: m.port } : {}), services: this.services.size }, 'proxy worker up');
          resolve(m.port);
        } else if (m.t === 'done') {
          const p = this.pending.get(m.id);
          if (!p) return;
          if (m.error) {
            this.pending.delete(m.id);
            return p.reject(new Error(`proxy worker ${w.process.pid}: ${m.error}`));
          }
          p.port ??= m.port;
          p.replied = true;
          this.answered(m.id, p, w);
        } else if (m.t === 'rate') {
          const r = this.counter.hit(m.key, m.windowMs, m.now);
          w.send({ t: 'rate', id: m.id, ...r } satisfies ToWorker);
        } else if (m.t === 'cert') {
          if (!o.certFor) return w.send({ t: 'cert', id: m.id, error: 'no certificates here' } satisfies ToWorker);
          o.certFor(m.name).then(
            (c) => w.send({ t: 'cert', id: m.id, ...c } satisfies ToWorker),
            (err: Error) => w.send({ t: 'cert', id: m.id, error: err.message } satisfies ToWorker),
          );
        }
      });
      w.once('exit', (code, signal) => {
        this.ready.delete(w);
        // Commands it will not answer any more: the others' answers settle them.
        for (const [id, p] of this.pending) this.answered(id, p, w);
        if (!up) return reject(new Error(`a proxy worker exited before listening (${signal ?? code})`));
        if (this.closing) return;
        o.logger.warn({ worker: w.process.pid, code, signal }, 'proxy worker ended; starting another');
        setTimeout(() => void this.fork().catch((err: Error) => o.logger.error({ err: err.message }, 'proxy worker failed to start')), 500).unref();
      });
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    this.unsubscribe?.();
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w);
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve) => {
            if (w.isDead()) return resolve();
            // A worker answers what it has in progress first (the proxy drains for up to 10 s).
            const kill = setTimeout(() => w.process.kill('SIGKILL'), 12_000);
            w.once('exit', () => {
              clearTimeout(kill);
              resolve();
            });
            w.process.kill('SIGTERM');
          }),
      ),
    );
  }
}
