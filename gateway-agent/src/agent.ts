import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { clusterCidrV6, poolCidrV4 } from '@postern/apis';
import { modifyResource, type ResourceCache, type ResourceStore } from '@postern/store';
import { desiredPeers } from './peers.js';
import { WireGuardInterface, generateKeyPair, publicKeyOf, runTool, type Implementation } from './wireguard.js';

export const defaultListenPort = 53820;
export const defaultMtu = 1280;
/** How often a gateway says it is alive (Gateway `status.lastSeenAt`); clients leave one silent for 3 beats. */
export const defaultHeartbeatSeconds = 10;
/** Kinds the agent reads. */
export const agentCacheKinds = ['Session', 'User', 'Gateway'] as const;

export interface GatewayAgentOptions {
  store: ResourceStore;
  /** A started cache of at least `agentCacheKinds`. */
  cache: ResourceCache;
  /** This gateway's name (one per gateway host), e.g. the host name. */
  name: string;
  /** Host (or IP) clients dial: the WireGuard endpoint is `<endpoint>:<listenPort>`. */
  endpoint: string;
  /** Folder for this gateway's private key (0600). */
  dataDir: string;
  /** The cluster's IPv6 /64 prefix (four groups). */
  ipv6Prefix: string;
  interfaceName?: string;
  listenPort?: number;
  mtu?: number;
  implementation?: Implementation | 'auto';
  /** Seconds between heartbeats; default 10. */
  heartbeatSeconds?: number;
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
  now?: () => Date;
}

/**
 * The gateway agent: owns this host's WireGuard interface, registers it as a Gateway resource,
 * and keeps its peers equal to the connected sessions, following the store's watch. On start it
 * reconciles an interface left from an earlier run (no stale peer stays, no live one drops).
 */
export class GatewayAgent {
  readonly wg: WireGuardInterface;
  private unsubscribe: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private closed = false;
  private readonly now: () => Date;
  publicKey = '';
  /** Counters for tests and metrics. */
  readonly stats = { syncs: 0, lastSyncMs: 0, peers: 0 };

  constructor(private readonly opts: GatewayAgentOptions) {
    this.wg = new WireGuardInterface(opts.interfaceName ?? 'pstgw0');
    this.now = opts.now ?? (() => new Date());
  }

  private log(level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>): void {
    this.opts.log?.(level, msg, fields);
  }

  private privateKey(): string {
    mkdirSync(this.opts.dataDir, { recursive: true, mode: 0o700 });
    const file = join(this.opts.dataDir, `gateway-${this.opts.name}.key`);
    if (existsSync(file)) return readFileSync(file, 'utf8').trim();
    const { privateKey } = generateKeyPair();
    writeFileSync(file, `${privateKey}\n`, { mode: 0o600 });
    chmodSync(file, 0o600);
    return privateKey;
  }

  async start(): Promise<void> {
    const key = this.privateKey();
    this.publicKey = publicKeyOf(key);
    const impl = await this.wg.create(this.opts.implementation ?? 'auto');
    await this.wg.configure({ privateKey: key, listenPort: this.opts.listenPort ?? defaultListenPort, mtu: this.opts.mtu ?? defaultMtu });
    // Session addresses are reached through the tunnel; the whole Service range is local here,
    // so the proxy can listen on any Service address and the DNS on its address, without NAT.
    await this.wg.route(poolCidrV4('wireguard'));
    await this.wg.route(`${this.opts.ipv6Prefix}::6441:0/112`);
    await execLocalRoute(poolCidrV4('service'));
    await execLocalRoute(`${this.opts.ipv6Prefix}::6440:0/112`);
    await this.register();
    this.unsubscribe = this.opts.cache.onChange((ev) => {
      if (ev.type === 'RESYNC' || ev.resource.kind === 'Session' || ev.resource.kind === 'User') this.schedule();
    });
    await this.sync();
    // A safety net: catches anything a missed event would leave (and clock-based expiry).
    this.timer = setInterval(() => this.schedule(), 5000);
    this.timer.unref();
    // Other gateways and the API tell live gateways from gone ones by this beat.
    this.heartbeat = setInterval(() => void this.beat(), this.heartbeatSeconds * 1000);
    this.heartbeat.unref();
    this.log('info', 'gateway agent up', { name: this.opts.name, interface: this.wg.name, implementation: impl, publicKey: this.publicKey });
  }

  private get heartbeatSeconds(): number {
    return this.opts.heartbeatSeconds ?? defaultHeartbeatSeconds;
  }

  private async register(): Promise<void> {
    const status = {
      state: 'READY',
      lastSeenAt: this.now().toISOString(),
      heartbeatSeconds: this.heartbeatSeconds,
      hostname: this.opts.name,
      publicIPs: [this.opts.endpoint],
      cidr: { v4: '100.64.0.0/10', v6: clusterCidrV6(this.opts.ipv6Prefix) },
      wireguard: { port: this.opts.listenPort ?? defaultListenPort, publicKey: this.publicKey },
    };
    for (let attempt = 0; attempt < 5; attempt++) {
      const have = await this.opts.store.get('Gateway', this.opts.name);
      try {
        if (!have) await this.opts.store.create({ kind: 'Gateway', metadata: { name: this.opts.name }, spec: {}, status });
        else await this.opts.store.update({ ...have, status }, { ifVersion: have.metadata.resourceVersion! });
        return;
      } catch (err) {
        if (attempt === 4) throw err;
      }
    }
  }

  /** Records that this gateway is alive (or, when closing, that it is gone). Best effort: the next beat retries. */
  private async beat(state: 'READY' | 'DOWN' = 'READY'): Promise<void> {
    try {
      await modifyResource(this.opts.store, 'Gateway', this.opts.name, (g) => ({ ...g, status: { ...g.status, state, lastSeenAt: this.now().toISOString() } }));
    } catch (err) {
      this.log('warn', 'gateway heartbeat failed', { err: (err as Error).message });
    }
  }

  /** Coalesces bursts of changes into one `wg set`, and never runs two syncs at once. */
  schedule(): void {
    if (this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.sync().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
    });
  }

  /** Makes the peers equal to the connected sessions now. */
  async sync(): Promise<void> {
    const t0 = performance.now();
    const { peers, nextExpiry } = desiredPeers(this.opts.cache.list('Session'), (n) => this.opts.cache.get('User', n), this.now());
    try {
      const changes = await this.wg.syncPeers(peers);
      this.stats.syncs++;
      this.stats.peers = peers.length;
      this.stats.lastSyncMs = performance.now() - t0;
      if (changes.added || changes.removed || changes.updated) this.log('info', 'peers synced', { ...changes, peers: peers.length, ms: +this.stats.lastSyncMs.toFixed(1) });
    } catch (err) {
      this.log('warn', 'peer sync failed; will retry', { err: (err as Error).message });
    }
    // Drop a session's peer the moment it expires, not at the next tick.
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    if (nextExpiry !== undefined && !this.closed) {
      this.expiryTimer = setTimeout(() => this.schedule(), Math.max(0, Math.min(nextExpiry - this.now().getTime() + 5, 2 ** 31 - 1)));
      this.expiryTimer.unref();
    }
  }

  /**
   * Stops following the store and marks this gateway DOWN, so clients with another gateway move
   * there. The interface stays (with its peers, so a restart drops no tunnel) unless `destroy` is set.
   */
  async close(opts: { destroy?: boolean } = {}): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    if (this.timer) clearInterval(this.timer);
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    await this.running;
    if (this.publicKey) await this.beat('DOWN');
    if (opts.destroy) await this.wg.destroy();
  }
}

/** `ip route replace local <cidr> dev lo`: every address in the range is this host's. */
async function execLocalRoute(cidr: string): Promise<void> {
  await runTool('ip', [...(cidr.includes(':') ? ['-6'] : []), 'route', 'replace', 'local', cidr, 'dev', 'lo']);
}
