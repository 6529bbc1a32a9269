import { generateKeyPairSync, createPrivateKey, createPublicKey } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createConnection, isIP } from 'node:net';
import { join } from 'node:path';
import type { Options } from 'execa';

/**
 * execa, loaded on the first tool run: it is ~150 ms of module loading, which every `postern`
 * command paid at start-up whether it ran a tool or not.
 */
let execaLoaded: Promise<typeof import('execa')> | undefined;

/** Runs a tool; a failure becomes a short error naming the command and its stderr (never the whole argv). */
export async function runTool(file: string, args: readonly string[], opts: Options = {}) {
  const { execa } = await (execaLoaded ??= import('execa'));
  const r = await execa(file, args, { ...opts, reject: false });
  if (r.exitCode !== 0 && opts.reject !== false) {
    const shown = [file, ...args.slice(0, 6)].join(' ') + (args.length > 6 ? ' …' : '');
    throw new Error(`${shown} failed (exit ${r.exitCode}): ${String(r.stderr ?? '').trim().slice(0, 500)}`);
  }
  return { exitCode: r.exitCode ?? 0, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? '') };
}

/** A WireGuard peer as `wg` sees it. Keys are base64 (32 bytes). */
export interface Peer {
  publicKey: string;
  allowedIps: string[];
  /** `host:port`, for the side that dials. */
  endpoint?: string;
  /** Seconds; 0 or undefined: off. */
  keepalive?: number;
}

export interface PeerStatus extends Peer {
  /** Seconds since the epoch of the latest handshake; 0 when none yet. */
  latestHandshake: number;
  rxBytes: number;
  txBytes: number;
}

export type Implementation = 'kernel' | 'userspace';

/** A new X25519 key pair in WireGuard's encoding, made with node:crypto (no `wg genkey` process). */
export function generateKeyPair(): { privateKey: string; publicKey: string } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const d = privateKey.export({ format: 'jwk' }).d!;
  const x = publicKey.export({ format: 'jwk' }).x!;
  return { privateKey: Buffer.from(d, 'base64url').toString('base64'), publicKey: Buffer.from(x, 'base64url').toString('base64') };
}

/** The public key of a WireGuard private key. */
export function publicKeyOf(privateKey: string): string {
  const d = Buffer.from(privateKey, 'base64').toString('base64url');
  const pub = createPublicKey(createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d, x: '' }, format: 'jwk' }));
  return Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url').toString('base64');
}

/** An endpoint as `ip:port` or `[ipv6]:port`, which UAPI takes as it is (it resolves no host names). */
function literalEndpoint(endpoint: string): boolean {
  const m = /^\[([^\]]+)\]:\d+$/.exec(endpoint) ?? /^([^:]+):\d+$/.exec(endpoint);
  return m !== null && isIP(m[1]!) !== 0;
}

/** `wg set` arguments that set the peers `set` and remove the keys `remove`. */
function wgSetArgs(set: readonly Peer[], remove: readonly string[]): string[] {
  const args: string[] = [];
  for (const p of set) {
    args.push('peer', p.publicKey, 'allowed-ips', p.allowedIps.join(','));
    if (p.endpoint) args.push('endpoint', p.endpoint);
    args.push('persistent-keepalive', String(p.keepalive ?? 0));
  }
  for (const key of remove) args.push('peer', key, 'remove');
  return args;
}

/**
 * The same change as one UAPI `set` request. UAPI is line-based: every value is checked to be
 * what it says first, so none can carry a second line.
 */
function uapiSet(set: readonly Peer[], remove: readonly string[]): string {
  const hex = (key: string) => {
    const bytes = Buffer.from(key, 'base64');
    if (bytes.length !== 32 || bytes.toString('base64') !== key) throw new Error(`${JSON.stringify(key.slice(0, 60))} is not a WireGuard public key`);
    return bytes.toString('hex');
  };
  const range = (cidr: string) => {
    const [ip, bits, extra] = cidr.split('/');
    if (extra !== undefined || !isIP(ip!) || !/^\d{1,3}$/.test(bits ?? '')) throw new Error(`${JSON.stringify(cidr.slice(0, 60))} is not an address range`);
    return cidr;
  };
  const lines = ['set=1'];
  for (const p of set) {
    lines.push(`public_key=${hex(p.publicKey)}`, 'replace_allowed_ips=true', ...p.allowedIps.map((ip) => `allowed_ip=${range(ip)}`));
    if (p.endpoint) lines.push(`endpoint=${p.endpoint}`);
    lines.push(`persistent_keepalive_interval=${p.keepalive ?? 0}`);
  }
  for (const key of remove) lines.push(`public_key=${hex(key)}`, 'remove=true');
  return `${lines.join('\n')}\n`;
}

const userspaceEnv = { WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1' };
const socketDir = '/var/run/wireguard';

/**
 * One WireGuard interface driven through wireguard-tools (`wg`, `ip`): the kernel module where it
 * exists, wireguard-go on a TUN device where not. Never through a shell; peer changes go in one
 * batched `wg set`. wireguard-go's control sockets share one folder for every network namespace,
 * so interface names must be unique on the host.
 */
export class WireGuardInterface {
  implementation: Implementation | undefined;

  constructor(readonly name: string) {
    if (!/^[a-zA-Z0-9_=+.-]{1,15}$/.test(name)) throw new Error(`"${name}" is not a valid interface name (1-15 characters)`);
  }

  async exists(): Promise<boolean> {
    const r = await runTool('ip', ['link', 'show', 'dev', this.name], { reject: false });
    return r.exitCode === 0;
  }

  /** Creates the interface (kernel first, then wireguard-go, unless one is asked for). No-op when it exists. */
  async create(prefer: Implementation | 'auto' = 'auto'): Promise<Implementation> {
    if (await this.exists()) {
      this.implementation = existsSync(`${socketDir}/${this.name}.sock`) ? 'userspace' : 'kernel';
      return this.implementation;
    }
    if (prefer !== 'userspace') {
      const k = await runTool('ip', ['link', 'add', 'dev', this.name, 'type', 'wireguard'], { reject: false });
      if (k.exitCode === 0) return (this.implementation = 'kernel');
      if (prefer === 'kernel') throw new Error(`no kernel WireGuard here: ${k.stderr.trim()}`);
    }
    // wireguard-go daemonizes once its UAPI socket is up, and outlives us: a restarted agent finds
    // the interface as it was and reconciles it, so live tunnels are not dropped.
    await runTool('wireguard-go', [this.name], { env: userspaceEnv, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe' });
    return (this.implementation = 'userspace');
  }

  async configure(opts: { privateKey: string; listenPort?: number; mtu: number; addresses?: string[] }): Promise<void> {
    // `wg` reads the key from a file; it lives for one call in a private temporary folder.
    const dir = mkdtempSync(join(tmpdir(), 'postern-wg-'));
    try {
      const file = join(dir, 'key');
      writeFileSync(file, `${opts.privateKey}\n`, { mode: 0o600 });
      await runTool('wg', ['set', this.name, 'private-key', file, ...(opts.listenPort ? ['listen-port', String(opts.listenPort)] : [])]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    for (const a of opts.addresses ?? []) await this.ip(['addr', 'replace', a, 'dev', this.name], a.includes(':'));
    await runTool('ip', ['link', 'set', 'dev', this.name, 'mtu', String(opts.mtu), 'up']);
  }

  private async ip(args: string[], v6 = false): Promise<void> {
    await runTool('ip', [...(v6 ? ['-6'] : []), ...args]);
  }

  /** Routes `cidr` into the tunnel (replacing any route for it). */
  async route(cidr: string): Promise<void> {
    await this.ip(['route', 'replace', cidr, 'dev', this.name], cidr.includes(':'));
  }

  /**
   * One request on wireguard-go's UAPI socket (what `wg` itself speaks to it): the answer's lines
   * before `errno=0`. Used for a userspace interface instead of starting a `wg` process per
   * change, which on a loaded two-core gateway took tens of ms before the peer was set.
   */
  private uapi(request: string): Promise<string[]> {
    return new Promise((resolve, reject) => {
      const c = createConnection(`${socketDir}/${this.name}.sock`);
      let text = '';
      c.setEncoding('utf8');
      c.setTimeout(10_000, () => c.destroy(new Error(`no answer on ${this.name}'s control socket within 10 s`)));
      c.on('data', (d: string) => {
        text += d;
        if (text.endsWith('\n\n')) c.end();
      });
      c.on('close', () => {
        const lines = text.split('\n').filter(Boolean);
        const errno = lines.pop();
        if (errno === 'errno=0') resolve(lines);
        else reject(new Error(`wireguard-go (${this.name}) did not accept the request: ${errno ?? 'no answer'}`));
      });
      c.on('error', reject);
      c.write(`${request}\n`);
    });
  }

  async status(): Promise<{ publicKey: string; listenPort: number; peers: PeerStatus[] }> {
    if (this.implementation === 'userspace') return this.statusUapi();
    const { stdout } = await runTool('wg', ['show', this.name, 'dump']);
    const [head, ...lines] = stdout.trim().split('\n');
    const h = head!.split('\t');
    const peers = lines.filter(Boolean).map((line) => {
      const [publicKey, , endpoint, allowed, handshake, rx, tx, keepalive] = line.split('\t');
      return {
        publicKey: publicKey!,
        allowedIps: allowed === '(none)' || !allowed ? [] : allowed.split(','),
        ...(endpoint && endpoint !== '(none)' ? { endpoint } : {}),
        ...(keepalive && keepalive !== 'off' ? { keepalive: Number(keepalive) } : {}),
        latestHandshake: Number(handshake),
        rxBytes: Number(rx),
        txBytes: Number(tx),
      };
    });
    return { publicKey: h[1]!, listenPort: Number(h[2]), peers };
  }

  /** `status()` read from the UAPI socket, in `wg show dump`'s terms (keys base64, keepalive 0 = off). */
  private async statusUapi(): Promise<{ publicKey: string; listenPort: number; peers: PeerStatus[] }> {
    const hexToKey = (hex: string) => Buffer.from(hex, 'hex').toString('base64');
    let publicKey = '';
    let listenPort = 0;
    const peers: PeerStatus[] = [];
    let peer: PeerStatus | undefined;
    for (const line of await this.uapi('get=1\n')) {
      const eq = line.indexOf('=');
      const [key, value] = [line.slice(0, eq), line.slice(eq + 1)];
      if (key === 'public_key') peers.push((peer = { publicKey: hexToKey(value), allowedIps: [], latestHandshake: 0, rxBytes: 0, txBytes: 0 }));
      else if (!peer) {
        if (key === 'private_key') publicKey = publicKeyOf(hexToKey(value));
        else if (key === 'listen_port') listenPort = Number(value);
      } else if (key === 'allowed_ip') peer.allowedIps.push(value);
      else if (key === 'endpoint') peer.endpoint = value;
      else if (key === 'persistent_keepalive_interval' && Number(value) > 0) peer.keepalive = Number(value);
      else if (key === 'last_handshake_time_sec') peer.latestHandshake = Number(value);
      else if (key === 'rx_bytes') peer.rxBytes = Number(value);
      else if (key === 'tx_bytes') peer.txBytes = Number(value);
    }
    return { publicKey, listenPort, peers };
  }

  /**
   * Makes the peers exactly `desired`: adds the missing, updates the changed, removes the rest,
   * in one change: one UAPI request for wireguard-go, one `wg set` call for the kernel module (and
   * for endpoints given as host names, which only `wg` resolves). Returns what it did.
   */
  async syncPeers(desired: readonly Peer[]): Promise<{ added: number; updated: number; removed: number }> {
    const current = new Map((await this.status()).peers.map((p) => [p.publicKey, p]));
    const set: Peer[] = [];
    let added = 0;
    let updated = 0;
    const want = new Map(desired.map((p) => [p.publicKey, p]));
    for (const p of desired) {
      const have = current.get(p.publicKey);
      const same = have && [...have.allowedIps].sort().join(',') === [...p.allowedIps].sort().join(',') && (!p.endpoint || have.endpoint === p.endpoint) && (have.keepalive ?? 0) === (p.keepalive ?? 0);
      if (same) continue;
      if (have) updated++;
      else added++;
      set.push(p);
    }
    const remove = [...current.keys()].filter((key) => !want.has(key));
    if (set.length || remove.length) {
      const named = set.some((p) => p.endpoint !== undefined && !literalEndpoint(p.endpoint));
      if (this.implementation === 'userspace' && !named) await this.uapi(uapiSet(set, remove));
      else await runTool('wg', ['set', this.name, ...wgSetArgs(set, remove)]);
    }
    return { added, updated, removed: remove.length };
  }

  /** Removes the interface; wireguard-go exits when its TUN device goes. */
  async destroy(): Promise<void> {
    await runTool('ip', ['link', 'del', 'dev', this.name], { reject: false });
    for (let i = 0; i < 50 && existsSync(`${socketDir}/${this.name}.sock`); i++) await new Promise((r) => setTimeout(r, 20));
    if (existsSync(`${socketDir}/${this.name}.sock`)) {
      await runTool('pkill', ['-f', `^wireguard-go ${this.name}$`], { reject: false });
    }
  }
}
