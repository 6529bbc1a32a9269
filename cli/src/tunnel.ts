import { createHash } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, platform } from 'node:os';
import { join } from 'node:path';
import { PosternError } from '@postern/apis';
import type { ConnectState } from '@postern/apiserver/client';
import { WireGuardInterface, generateKeyPair, runTool, type Implementation } from '@postern/gateway-agent/wireguard';
import { configDir } from './config.js';
import type { Io } from './io.js';

/** What a running (or crashed) `postern connect` left to undo, kept in the config folder. */
export interface TunnelState {
  domain: string;
  pid: number;
  iface: string;
  addresses: string[];
  routes: string[];
  /** How DNS was changed: not at all, systemd-resolved on the link, or /etc/resolv.conf. */
  dns: 'none' | 'resolved' | 'resolv.conf';
  /** The exact bytes of /etc/resolv.conf before we touched it. */
  resolvConfBackup?: string;
  resolvConfPath?: string;
  /** The gateway's endpoint, and its name. */
  gateway?: string;
  gatewayName?: string;
  session: string;
  startedAt: string;
  up: boolean;
}

const resolvConf = '/etc/resolv.conf';

export function tunnelStateFile(io: Io, domain: string): string {
  return join(configDir(io), 'tunnels', `${domain}.json`);
}

export function readTunnelState(io: Io, domain: string): TunnelState | undefined {
  const f = tunnelStateFile(io, domain);
  if (!existsSync(f)) return undefined;
  try {
    return JSON.parse(readFileSync(f, 'utf8')) as TunnelState;
  } catch {
    return undefined;
  }
}

export function writeTunnelState(io: Io, s: TunnelState): void {
  const f = tunnelStateFile(io, s.domain);
  mkdirSync(join(configDir(io), 'tunnels'), { recursive: true, mode: 0o700 });
  writeFileSync(f, JSON.stringify(s, null, 2), { mode: 0o600 });
}

/** Whether a process runs (a zombie, dead but not yet reaped, does not count). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** A host-unique interface name per domain and config folder: wireguard-go's sockets share one folder. */
export function interfaceName(io: Io, domain: string): string {
  return `pst${createHash('sha256').update(`${configDir(io)}|${domain}`).digest('hex').slice(0, 8)}`;
}

type Gateway = ConnectState['gateways'][number];

/**
 * The one gateway the tunnel uses (every gateway serves every Service, and their AllowedIPs are
 * the same cluster ranges, so a client has one peer). The cluster lists gateways in this session's
 * order of preference, live ones first. A pinned gateway (`--gateway NAME`) is used while listed;
 * otherwise the current one stays while it is listed, so a gateway joining moves nobody.
 */
export function chooseGateway(gateways: readonly Gateway[], opts: { pinned?: string; current?: string } = {}): Gateway {
  const named = (name?: string) => (name ? gateways.find((g) => g.name === name) : undefined);
  if (opts.pinned) {
    const g = named(opts.pinned);
    if (g) return g;
    if (!opts.current) throw new PosternError('ERR_NOT_FOUND', `no gateway named "${opts.pinned}"; the cluster has: ${gateways.map((x) => x.name).join(', ') || 'none'}`);
  }
  const g = named(opts.current) ?? gateways[0];
  if (!g) throw new PosternError('ERR_STORE_UNAVAILABLE', 'the cluster has no gateway yet: start one (posternd up --gateway-endpoint …)');
  return g;
}

/** A standard wg-quick configuration for the session through one gateway: a stock WireGuard client can use it. */
export function wgQuickConfig(state: ConnectState, gateway: Gateway, privateKey: string, opts: { dns: boolean }): string {
  const lines = ['# Postern session ' + state.session + ' on ' + state.domain, '[Interface]', `PrivateKey = ${privateKey}`, `Address = ${state.addresses.join(', ')}`, `MTU = ${state.mtu}`];
  if (opts.dns && state.dnsServers.length) lines.push(`DNS = ${[...state.dnsServers, `local.${state.domain}`].join(', ')}`);
  lines.push('', `# gateway ${gateway.name}`, '[Peer]', `PublicKey = ${gateway.publicKey}`, `Endpoint = ${gateway.endpoint}`, `AllowedIPs = ${gateway.allowedIps.join(', ')}`, `PersistentKeepalive = ${state.keepaliveSeconds}`);
  return `${lines.join('\n')}\n`;
}

/** The WireGuard peer for a gateway. */
export function gatewayPeer(g: Gateway, keepaliveSeconds: number) {
  return { publicKey: g.publicKey, endpoint: g.endpoint, allowedIps: g.allowedIps, keepalive: keepaliveSeconds };
}

function resolvedAvailable(): boolean {
  return existsSync('/run/systemd/resolve/stub-resolv.conf') && existsSync('/usr/bin/resolvectl');
}

/**
 * Brings the tunnel up from a Connect state: interface, addresses, peers, routes for the cluster
 * ranges only (no default route), DNS for `local.<domain>`. Records every step in the state file
 * first, so a crash at any point can be undone by the next connect or disconnect.
 */
export async function bringUp(io: Io, domain: string, st: ConnectState, gw: Gateway, privateKey: string, opts: { implementation: Implementation | 'auto'; dns: boolean; log: (s: string) => void; iface?: string }): Promise<TunnelState> {
  if (process.getuid?.() !== 0) {
    throw new PosternError('ERR_USAGE', 'creating a tunnel needs root (run with sudo), or use --export-wireguard FILE for a stock WireGuard client');
  }
  const iface = opts.iface ?? interfaceName(io, domain);
  const routes = [...new Set(gw.allowedIps)];
  const state: TunnelState = { domain, pid: process.pid, iface, addresses: st.addresses, routes, dns: 'none', session: st.session, gateway: gw.endpoint, gatewayName: gw.name, startedAt: new Date().toISOString(), up: false };
  writeTunnelState(io, state);
  const wg = new WireGuardInterface(iface);
  opts.log(`creating interface ${iface}`);
  await wg.create(opts.implementation);
  await wg.configure({ privateKey, mtu: st.mtu, addresses: st.addresses });
  await wg.syncPeers([gatewayPeer(gw, st.keepaliveSeconds)]);
  for (const r of routes) await wg.route(r);
  if (opts.dns && st.dnsServers.length) {
    if (resolvedAvailable()) {
      await runTool('resolvectl', ['dns', iface, ...st.dnsServers]);
      await runTool('resolvectl', ['domain', iface, `~local.${domain}`]);
      state.dns = 'resolved';
    } else if (existsSync(resolvConf) && lstatSync(resolvConf).isSymbolicLink()) {
      opts.log(`warning: ${resolvConf} is a link and systemd-resolved is not answering; DNS left unchanged (names resolve only with --no-dns off and a writable file)`);
    } else {
      const before = existsSync(resolvConf) ? readFileSync(resolvConf, 'utf8') : '';
      state.resolvConfBackup = before;
      state.resolvConfPath = resolvConf;
      state.dns = 'resolv.conf';
      writeTunnelState(io, state);
      // Ours first; the original servers stay after it, so other names still resolve when the
      // cluster forwards nothing (ours answers REFUSED and the resolver moves on).
      const kept = before.split('\n').filter((l) => l.trim() && !l.startsWith('# postern'));
      const text = [`# postern: managed while \`postern connect\` runs for ${domain}; restored on disconnect`, ...st.dnsServers.filter((d) => !d.includes(':')).map((d) => `nameserver ${d}`), ...kept].join('\n') + '\n';
      // In place (not rename): /etc/resolv.conf may be a bind mount (network namespaces).
      writeFileSync(resolvConf, text);
    }
  }
  state.up = true;
  writeTunnelState(io, state);
  return state;
}

/** Undoes everything a state file records: DNS back byte for byte, interface gone, file removed. */
export async function tearDown(io: Io, state: TunnelState): Promise<void> {
  if (state.dns === 'resolv.conf' && state.resolvConfBackup !== undefined) writeFileSync(state.resolvConfPath ?? resolvConf, state.resolvConfBackup);
  if (state.dns === 'resolved') await runTool('resolvectl', ['revert', state.iface], { reject: false });
  await new WireGuardInterface(state.iface).destroy();
  rmSync(tunnelStateFile(io, state.domain), { force: true });
}

export function clientInfo(): { hostname: string; osType: string } {
  return { hostname: hostname(), osType: platform() };
}

export { generateKeyPair };
