import { dnsOffset, ipv4At, ipv6At, servicePort, splitNamespaced } from '@postern/apis';
import { DnsServer } from '@postern/dns';
import { GatewayAgent, runTool, type Implementation } from '@postern/gateway-agent';
import type { ResourceCache, ResourceStore } from '@postern/store';
import type { Logger } from 'pino';

/** Where Service listeners open: the proxy in this process, or its worker processes. */
export interface ServiceListeners {
  listenService(fullName: string, host: string, port: number): Promise<number>;
  unlistenService(fullName: string, host: string): Promise<void>;
}

export interface GatewayOptions {
  /** This gateway's name; default the host name. */
  name: string;
  /** Host or IP that clients dial for WireGuard. */
  endpoint: string;
  interfaceName?: string;
  listenPort?: number;
  implementation?: Implementation | 'auto';
  /** Resolvers for names outside `local.<domain>`, `ip[:port]`. */
  dnsForwarders?: string[];
  /** Seconds between the agent's heartbeats (default 10). */
  heartbeatSeconds?: number;
  /** Where the DNS listens; default port 53 on the DNS address of the Service range. */
  dnsPort?: number;
}

/**
 * Everything a gateway host runs beside the API: the WireGuard agent, the private DNS on its
 * Service-range address, and a proxy listener on every Service's address (traffic from the
 * tunnel arrives there unchanged, so the proxy identifies callers by source address).
 */
export class GatewayHost {
  readonly agent: GatewayAgent;
  readonly dns: DnsServer;
  private readonly listening = new Map<string, { ip: string; port: number }>();
  private unsubscribe: (() => void) | undefined;
  private queue = Promise.resolve();

  constructor(
    private readonly deps: { store: ResourceStore; cache: ResourceCache; listeners: ServiceListeners; domain: string; ipv6Prefix: string; dataDir: string; logger: Logger },
    private readonly opts: GatewayOptions,
  ) {
    const log = (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => deps.logger[level](fields ?? {}, msg);
    this.agent = new GatewayAgent({
      store: deps.store,
      cache: deps.cache,
      name: opts.name,
      endpoint: opts.endpoint,
      dataDir: deps.dataDir,
      ipv6Prefix: deps.ipv6Prefix,
      ...(opts.interfaceName ? { interfaceName: opts.interfaceName } : {}),
      ...(opts.listenPort ? { listenPort: opts.listenPort } : {}),
      ...(opts.implementation ? { implementation: opts.implementation } : {}),
      ...(opts.heartbeatSeconds ? { heartbeatSeconds: opts.heartbeatSeconds } : {}),
      log,
    });
    this.dns = new DnsServer({
      cache: deps.cache,
      domain: deps.domain,
      forwarders: () => opts.dnsForwarders ?? ((deps.cache.get('ClusterConfig', 'default')?.spec as { dns?: { fallbackServers?: string[] } } | undefined)?.dns?.fallbackServers ?? []),
      log,
    });
  }

  async start(): Promise<void> {
    await this.agent.start();
    await this.dns.listen(ipv4At('service', dnsOffset), this.opts.dnsPort ?? 53);
    // IPv6 binds only to an address on an interface (a local route is not enough, unlike IPv4).
    const dns6 = ipv6At(this.deps.ipv6Prefix, 'service', dnsOffset);
    await runTool('ip', ['-6', 'addr', 'replace', `${dns6}/128`, 'dev', 'lo'])
      .then(() => this.dns.listen(dns6, this.opts.dnsPort ?? 53))
      .catch((err: Error) => this.deps.logger.warn({ err: err.message }, 'private DNS over IPv6 unavailable'));
    this.unsubscribe = this.deps.cache.onChange((ev) => {
      if (ev.type === 'RESYNC' || ev.resource.kind === 'Service') this.enqueue(() => this.reconcileListeners());
    });
    await this.reconcileListeners();
  }

  private enqueue(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn).catch((err: unknown) => this.deps.logger.warn({ err: (err as Error).message }, 'service listener reconcile failed'));
  }

  /** One proxy listener per Service address and port; gone when the Service goes. */
  private async reconcileListeners(): Promise<void> {
    const want = new Map<string, { ip: string; port: number }>();
    for (const svc of this.deps.cache.list('Service')) {
      const ip = (svc.status as { addresses?: { dualStackIP?: { ipv4?: string } }[] } | undefined)?.addresses?.[0]?.dualStackIP?.ipv4;
      const mode = (svc.spec as { mode?: string }).mode ?? 'HTTP';
      if (!ip) continue;
      if (!['HTTP', 'WEB', 'GRPC'].includes(mode)) {
        this.deps.logger.warn({ service: svc.metadata.name, mode }, 'this Service mode is not served by the proxy yet');
        continue;
      }
      want.set(svc.metadata.name, { ip, port: servicePort(svc.spec as { port?: number; isTLS?: boolean }) });
    }
    for (const [name, have] of this.listening) {
      const next = want.get(name);
      if (!next || next.ip !== have.ip || next.port !== have.port) {
        await this.deps.listeners.unlistenService(name, have.ip);
        this.listening.delete(name);
      }
    }
    for (const [name, w] of want) {
      if (this.listening.has(name)) continue;
      await this.deps.listeners.listenService(name, w.ip, w.port);
      this.listening.set(name, w);
      this.deps.logger.info({ service: name, address: `${w.ip}:${w.port}`, host: splitNamespaced(name).name }, 'service listener up');
    }
  }

  async close(opts: { destroyInterface?: boolean } = {}): Promise<void> {
    this.unsubscribe?.();
    await this.queue;
    await this.dns.close();
    await this.agent.close({ ...(opts.destroyInterface ? { destroy: true } : {}) });
  }
}
