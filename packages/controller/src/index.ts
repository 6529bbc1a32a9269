/**
 * @postern/controller — reconcilers that keep derived state true: every Service holds an address
 * from the Service range (stable across restarts: the allocation table remembers it), the
 * addresses of ended sessions go back to the pool, and expired sessions are deleted.
 * Imports apis and store only.
 */
import { ipv4At, ipv6At, isPosternError, reservedOffsets, type AnyResource } from '@postern/apis';
import { modifyResource, type BatchOp, type ResourceCache, type ResourceStore } from '@postern/store';

export const controllerCacheKinds = ['Service', 'Session'] as const;

export interface ControllerOptions {
  store: ResourceStore;
  cache: ResourceCache;
  ipv6Prefix: string;
  now?: () => Date;
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
  /** How often to look for expired sessions; default 1 s. */
  gcIntervalMs?: number;
}

type Addresses = { dualStackIP: { ipv4: string; ipv6: string } }[];

const serviceRange = { first: 1, last: 65534, reserved: reservedOffsets.service };
/** Services given their addresses in one allocation and one write. */
const batchSize = 200;

function sameAddresses(svc: AnyResource, want: Addresses): boolean {
  return JSON.stringify((svc.status as { addresses?: Addresses } | undefined)?.addresses) === JSON.stringify(want);
}

export class Controller {
  private unsubscribe: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private queue = Promise.resolve();
  /** Services waiting for their address, and whether a step to give them is queued. */
  private readonly pending = new Set<string>();
  private draining = false;
  private readonly now: () => Date;

  constructor(private readonly opts: ControllerOptions) {
    this.now = opts.now ?? (() => new Date());
  }

  async start(): Promise<void> {
    this.unsubscribe = this.opts.cache.onChange((ev) => {
      if (ev.type === 'RESYNC') return this.enqueue(() => this.reconcileAll());
      if (ev.resource.kind === 'Service') {
        if (ev.type === 'DELETED') this.enqueue(() => this.opts.store.releaseAddresses(ev.resource.metadata.uid!));
        // A change to a Service that has its address already (the controller's own status write
        // among them) needs no statements: addresses are only written after their allocation, and
        // released only with the Service. Start-up and a resync still check every Service.
        else if (ev.type !== 'MODIFIED' || !(ev.resource.status as { addresses?: Addresses } | undefined)?.addresses?.length) {
          this.needAddress(ev.resource.metadata.name);
        }
      }
      if (ev.resource.kind === 'Session' && ev.type === 'DELETED') this.enqueue(() => this.opts.store.releaseAddresses(ev.resource.metadata.uid!));
    });
    await this.reconcileAll();
    this.timer = setInterval(() => this.enqueue(() => this.collectExpired()), this.opts.gcIntervalMs ?? 1000);
    this.timer.unref();
  }

  private enqueue(fn: () => Promise<unknown>): void {
    this.queue = this.queue.then(fn).then(
      () => undefined,
      (err: unknown) => this.opts.log?.('warn', 'controller step failed; it will be retried on the next change', { err: (err as Error).message }),
    );
  }

  private async reconcileAll(): Promise<void> {
    const names = this.opts.cache.list('Service').map((s) => s.metadata.name);
    for (let i = 0; i < names.length; i += batchSize) await this.ensureServiceAddresses(names.slice(i, i + batchSize));
    await this.collectExpired();
  }

  /**
   * Services that came in while the queue was busy are given their addresses together: a
   * thousand applied at once cost a few statements per hundred, not a dozen each.
   */
  private needAddress(name: string): void {
    this.pending.add(name);
    if (this.draining) return;
    this.draining = true;
    this.enqueue(async () => {
      try {
        while (this.pending.size) {
          const names = [...this.pending].slice(0, batchSize);
          for (const n of names) this.pending.delete(n);
          await this.ensureServiceAddresses(names).catch((err: unknown) => {
            // Logged by enqueue; these Services go with the next change (or a resync).
            for (const n of names) this.pending.add(n);
            throw err;
          });
        }
      } finally {
        this.draining = false;
      }
    });
  }

  /**
   * Gives each named Service its address: one allocation for all of them and one write of those
   * whose status changes, guarded by the versions read. If the write meets a change made in
   * between, each Service is done on its own (read again, retried).
   */
  private async ensureServiceAddresses(names: readonly string[]): Promise<void> {
    const services = names.map((n) => this.opts.cache.get('Service', n)).filter((s) => s !== undefined);
    if (services.length === 0) return;
    let offsets: Map<string, number>;
    try {
      offsets = await this.opts.store.allocateAddresses('service', services.map((s) => s.metadata.uid!), serviceRange);
    } catch (err) {
      if (!isPosternError(err, 'ERR_IN_USE')) throw err;
      // A nearly full range: as many as fit, one at a time (the rest are logged).
      for (const n of names) await this.ensureServiceAddress(n).catch((e: Error) => this.opts.log?.('warn', 'no address for the Service', { service: n, err: e.message }));
      return;
    }
    const ops: BatchOp[] = [];
    for (const svc of services) {
      const want = this.addresses(offsets.get(svc.metadata.uid!)!);
      if (sameAddresses(svc, want)) continue;
      ops.push({ op: 'update', resource: { ...svc, status: { ...svc.status, addresses: want } }, ifVersion: svc.metadata.resourceVersion! });
    }
    let written: AnyResource[];
    try {
      written = await this.opts.store.batch(ops);
    } catch (err) {
      if (!isPosternError(err, 'ERR_CONFLICT') && !isPosternError(err, 'ERR_NOT_FOUND')) throw err;
      for (const op of ops) if (op.op === 'update') await this.ensureServiceAddress(op.resource.metadata.name);
      return;
    }
    for (const svc of written) this.logAssigned(svc);
  }

  private addresses(offset: number): Addresses {
    return [{ dualStackIP: { ipv4: ipv4At('service', offset), ipv6: ipv6At(this.opts.ipv6Prefix, 'service', offset) } }];
  }

  private logAssigned(svc: AnyResource | undefined): void {
    const ipv4 = (svc?.status as { addresses?: Addresses } | undefined)?.addresses?.[0]?.dualStackIP.ipv4;
    if (svc && ipv4) this.opts.log?.('info', 'service address assigned', { service: svc.metadata.name, ipv4 });
  }

  /** Gives a Service its address (v4 and v6 from one allocation) if its status lacks it. */
  private async ensureServiceAddress(name: string): Promise<void> {
    const updated = await modifyResource(this.opts.store, 'Service', name, async (svc) => {
      const want = this.addresses(await this.opts.store.allocateAddress('service', svc.metadata.uid!, serviceRange));
      return sameAddresses(svc, want) ? undefined : { ...svc, status: { ...svc.status, addresses: want } };
    });
    this.logAssigned(updated);
  }

  /** Deletes sessions past their expiry (their peers and addresses go with them). */
  private async collectExpired(): Promise<void> {
    const t = this.now().getTime();
    for (const s of this.opts.cache.list('Session')) {
      const exp = (s.spec as { expiresAt?: string } | undefined)?.expiresAt;
      if (!exp || Date.parse(exp) > t) continue;
      try {
        await this.opts.store.delete('Session', s.metadata.name, { ifVersion: s.metadata.resourceVersion! });
        this.opts.log?.('info', 'expired session deleted', { session: s.metadata.name });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code !== 'ERR_NOT_FOUND' && code !== 'ERR_CONFLICT') throw err;
      }
    }
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    if (this.timer) clearInterval(this.timer);
    await this.queue;
  }
}

