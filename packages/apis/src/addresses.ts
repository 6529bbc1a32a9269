/**
 * The address plan of REFERENCE.md: cluster network 100.64.0.0/10 with Services in
 * 100.64.0.0/16, WireGuard sessions in 100.65.0.0/16 and QUIC sessions in 100.66.0.0/16; the
 * same split inside the cluster's IPv6 ULA /64, with the IPv4 address in the low 32 bits
 * (`fdXX:XXXX:XXXX:XXXX::6441:0203` stands beside 100.65.2.3), so one allocation names both.
 */
export const addressPools = {
  service: { base: [100, 64], description: 'Services' },
  wireguard: { base: [100, 65], description: 'WireGuard sessions' },
  quic: { base: [100, 66], description: 'QUIC sessions' },
} as const;
export type AddressPool = keyof typeof addressPools;

export const clusterCidrV4 = '100.64.0.0/10';
/** The private DNS answers on this Service-range address (offset 53 of the Service pool). */
export const dnsOffset = 53;
/** Offsets never handed out: the network, the DNS server, the last (broadcast-like) address. */
export const reservedOffsets: Readonly<Record<AddressPool, readonly number[]>> = { service: [0, dnsOffset, 65535], wireguard: [0, 65535], quic: [0, 65535] };

export function poolCidrV4(pool: AddressPool): string {
  const [a, b] = addressPools[pool].base;
  return `${a}.${b}.0.0/16`;
}

/** 100.65.x.y for an offset x*256+y in the pool. */
export function ipv4At(pool: AddressPool, offset: number): string {
  const [a, b] = addressPools[pool].base;
  return `${a}.${b}.${(offset >> 8) & 255}.${offset & 255}`;
}

/** `fd12:3456:789a:bcde` → the /64 of the cluster. */
export function ipv6At(prefix64: string, pool: AddressPool, offset: number): string {
  const [a, b] = addressPools[pool].base;
  const hi = ((a << 8) | b).toString(16);
  const lo = offset.toString(16);
  return `${prefix64}::${hi}:${lo}`;
}

export function clusterCidrV6(prefix64: string): string {
  return `${prefix64}::/64`;
}

/** The pool and offset of a cluster IPv4 address, or undefined when it is outside the pools. */
export function offsetOf(ip: string): { pool: AddressPool; offset: number } | undefined {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4) return undefined;
  for (const [pool, def] of Object.entries(addressPools) as [AddressPool, (typeof addressPools)[AddressPool]][]) {
    if (parts[0] === def.base[0] && parts[1] === def.base[1]) return { pool, offset: (parts[2]! << 8) | parts[3]! };
  }
  return undefined;
}

/** A random ULA /64 prefix (RFC 4193), as four groups: made once at cluster init. */
export function randomUlaPrefix(random: (n: number) => Uint8Array): string {
  const r = random(7);
  const bytes = [0xfd, ...r];
  const groups = [];
  for (let i = 0; i < 8; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return groups.join(':');
}
