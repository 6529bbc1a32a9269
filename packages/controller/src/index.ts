/**
 * @postern/controller — reconcilers that keep derived state true: every Service holds an address
 * from the Service range (stable across restarts: the allocation table remembers it), the
 * addresses of ended sessions go back to the pool, and expired sessions are deleted.
 * Imports apis and store only.
 */
import { ipv4At, ipv6At, reservedOffsets } from '@postern/apis';
import { modifyResource, type ResourceCache, type ResourceStore } from '@postern/store';

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

export class Controller {
  private unsubscribe: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private queue = Promise.resolve();
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
          this.enqueue(() => this.ensureServiceAddress(ev.resource.metadata.name));
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
    for (const s of this.opts.cache.list('Service')) await this.ensureServiceAddress(s.metadata.name);
    await this.collectExpired();
  }

  /** Gives a Service its address (v4 and v6 from one allocation) if its status lacks it. */
  private async ensureServiceAddress(name: string): Promise<void> {
    const updated = await modifyResource(this.opts.store, 'Service', name, async (svc) => {
      const offset = await this.opts.store.allocateAddress('service', svc.metadata.uid!, { first: 1, last: 65534, reserved: reservedOffsets.service });
      const want: Addresses = [{ dualStackIP: { ipv4: ipv4At('service', offset), ipv6: ipv6At(this.opts.ipv6Prefix, 'service', offset) } }];
      const have = (svc.status as { addresses?: Addresses } | undefined)?.addresses;
      return JSON.stringify(have) === JSON.stringify(want) ? undefined : { ...svc, status: { ...svc.status, addresses: want } };
    });
    const ipv4 = (updated?.status as { addresses?: Addresses } | undefined)?.addresses?.[0]?.dualStackIP.ipv4;
    if (ipv4) this.opts.log?.('info', 'service address assigned', { service: name, ipv4 });
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

