import type { AnyResource } from '@postern/apis';
import type { Peer } from './wireguard.js';

/** What a connected session carries in `status.connection` for WireGuard. */
export interface SessionConnection {
  addresses?: string[];
  type?: string;
  wireguard?: { publicKey?: string };
}

/**
 * Translator: sessions and users → the gateway's WireGuard peers. A session is a peer while it is
 * connected over WireGuard, ACTIVE, not expired, and its user exists and is not disabled; its
 * AllowedIPs are exactly its own addresses. Pure: plain data in, peers out.
 */
export function desiredPeers(sessions: readonly AnyResource[], userOf: (name: string) => AnyResource | undefined, now: Date): { peers: Peer[]; nextExpiry: number | undefined } {
  const peers: Peer[] = [];
  let nextExpiry: number | undefined;
  const seenKeys = new Set<string>();
  for (const s of sessions) {
    const st = (s.status ?? {}) as { isConnected?: boolean; type?: string; userRef?: { name?: string; uid?: string }; connection?: SessionConnection };
    const spec = (s.spec ?? {}) as { state?: string; expiresAt?: string };
    const key = st.connection?.wireguard?.publicKey;
    if (!st.isConnected || st.connection?.type !== 'WIREGUARD' || !key || !st.connection.addresses?.length) continue;
    if ((spec.state ?? 'ACTIVE') !== 'ACTIVE' || st.type === 'CLIENTLESS') continue;
    const expires = spec.expiresAt ? Date.parse(spec.expiresAt) : Infinity;
    if (expires <= now.getTime()) continue;
    const user = st.userRef?.name ? userOf(st.userRef.name) : undefined;
    if (!user || (st.userRef?.uid && user.metadata.uid !== st.userRef.uid) || (user.spec as { isDisabled?: boolean }).isDisabled) continue;
    // One key, one peer: a key reused by two sessions would let one take the other's addresses.
    if (seenKeys.has(key)) continue;
    seenKeys.add(key);
    if (expires !== Infinity) nextExpiry = Math.min(nextExpiry ?? Infinity, expires);
    peers.push({ publicKey: key, allowedIps: st.connection.addresses.map((a) => (a.includes('/') ? a : a.includes(':') ? `${a}/128` : `${a}/32`)) });
  }
  return { peers, nextExpiry };
}
