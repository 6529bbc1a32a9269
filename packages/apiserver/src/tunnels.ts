import { createHash } from 'node:crypto';
import { PosternError, clusterCidrV4, clusterCidrV6, dnsOffset, ipv4At, ipv6At, reservedOffsets, type AnyResource } from '@postern/apis';
import type { Identity } from '@postern/authserver';
import { modifyResource, type ResourceCache, type ResourceStore } from '@postern/store';
import type { ConnectState, ServiceInfo } from './gen/postern/user/v1/user.js';

export const tunnelMtu = 1280;
export const keepaliveSeconds = 30;
const wgKey = /^[A-Za-z0-9+/]{43}=$/;

/** The Services a session may reach and the state a tunnel follows are the wire types (proto/postern/user/v1). */
export type { ConnectState, ServiceInfo };

/**
 * The User API's tunnel calls: allocates a session's addresses (race-free, in the database),
 * records the connection on the Session (which the gateway agents turn into peers), and
 * describes the gateways to the client.
 */
export class Tunnels {
  constructor(
    private readonly store: ResourceStore,
    private readonly cache: ResourceCache,
    private readonly domain: string,
    private readonly ipv6Prefix: string,
    private readonly now: () => Date,
    /** The Services an identity may reach (the User API's ListServices). */
    private readonly servicesFor: (identity: Identity) => ServiceInfo[],
  ) {}

  /**
   * The state a client needs. Gateways come in the order the client should prefer them: the live
   * ones (READY and heard from within 3 heartbeats) first, each session's order its own (a
   * rendezvous hash of session and gateway), so sessions spread over gateways and a gateway that
   * comes or goes moves only its share. Gateways that are down are listed only when none is live:
   * a single gateway restarting does not take the tunnel away. `services`, when given, is what
   * the session may reach (computed by the caller when it knows nothing changed it).
   */
  state(identity: Identity, addresses: string[], services?: ServiceInfo[]): ConnectState {
    const session = identity.session;
    const allowedIps = [clusterCidrV4, clusterCidrV6(this.ipv6Prefix)];
    const now = this.now().getTime();
    const all = this.cache.list('Gateway').flatMap((g) => {
      const st = (g.status ?? {}) as { wireguard?: { publicKey?: string; port?: number }; publicIPs?: string[]; state?: string; lastSeenAt?: string; heartbeatSeconds?: number };
      const host = st.publicIPs?.[0];
      if (!st.wireguard?.publicKey || !host) return [];
      const silentMs = st.lastSeenAt ? now - Date.parse(st.lastSeenAt) : 0;
      const live = st.state !== 'DOWN' && silentMs <= 3 * (st.heartbeatSeconds ?? 10) * 1000;
      const rank = createHash('sha256').update(`${session.metadata.uid}/${g.metadata.name}`).digest('hex');
      return [{ live, rank, gateway: { name: g.metadata.name, publicKey: st.wireguard.publicKey, endpoint: `${host.includes(':') ? `[${host}]` : host}:${st.wireguard.port ?? 53820}`, allowedIps } }];
    });
    const live = all.filter((g) => g.live);
    const gateways = (live.length ? live : all).sort((a, b) => (a.rank < b.rank ? -1 : 1)).map((g) => g.gateway);
    return {
      addresses,
      gateways,
      dnsServers: [ipv4At('service', dnsOffset), ipv6At(this.ipv6Prefix, 'service', dnsOffset)],
      mtu: tunnelMtu,
      domain: this.domain,
      keepaliveSeconds,
      session: session.metadata.name,
      services: services ?? this.servicesFor(identity),
    };
  }

  /** Connects (or reconnects, replacing the key) the caller's session; returns what the client needs. */
  async connect(identity: Identity, req: { wireguardPublicKey: string; hostname: string; osType: string }): Promise<ConnectState> {
    const type = (identity.session.status as { type?: string } | undefined)?.type;
    if (type !== 'CLIENT') throw new PosternError('ERR_PERMISSION_DENIED', 'only CLIENT sessions may open tunnels; this one is CLIENTLESS (log in with an auth token)');
    if (!wgKey.test(req.wireguardPublicKey)) throw new PosternError('ERR_INVALID_VALUE', 'wireguardPublicKey is not a WireGuard public key (44 characters of base64)');
    const uid = identity.session.metadata.uid!;
    const offset = await this.store.allocateAddress('wireguard', uid, { first: 1, last: 65534, reserved: reservedOffsets.wireguard });
    const addresses = [`${ipv4At('wireguard', offset)}/32`, `${ipv6At(this.ipv6Prefix, 'wireguard', offset)}/128`];
    const at = this.now().toISOString();
    const updated = await modifyResource(this.store, 'Session', identity.session.metadata.name, (current) => ({
      ...current,
      status: {
        ...current.status,
        isConnected: true,
        connection: { addresses, type: 'WIREGUARD', startedAt: at, lastSeenAt: at, wireguard: { publicKey: req.wireguardPublicKey }, ...(req.hostname ? { hostname: req.hostname } : {}), ...(req.osType ? { osType: req.osType } : {}) },
      },
    }));
    if (!updated) throw new PosternError('ERR_TOKEN_INVALID', 'the session ended while connecting');
    this.cache.apply({ type: 'MODIFIED', resource: updated, version: updated.metadata.resourceVersion! });
    return this.state({ ...identity, session: updated }, addresses);
  }

  /** Marks the caller's session disconnected and frees its addresses. */
  async disconnect(identity: Identity): Promise<void> {
    const updated = await modifyResource(this.store, 'Session', identity.session.metadata.name, (current) => {
      const { connection: _gone, ...rest } = (current.status ?? {}) as Record<string, unknown>;
      return { ...current, status: { ...rest, isConnected: false } };
    });
    if (updated) this.cache.apply({ type: 'MODIFIED', resource: updated, version: updated.metadata.resourceVersion! });
    await this.store.releaseAddresses(identity.session.metadata.uid!);
  }
}
