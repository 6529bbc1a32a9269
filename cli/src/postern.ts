import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { WireGuardInterface } from '@postern/gateway-agent/wireguard';
import type { ConnectState } from '@postern/apiserver/client';
import { bringUp, chooseGateway, clientInfo, gatewayPeer, generateKeyPair, isAlive, readTunnelState, tearDown, tunnelStateFile, wgQuickConfig, writeTunnelState, type TunnelState } from './tunnel.js';
import { resolve } from 'node:path';
import { PosternError, isPosternError } from '@postern/apis';
import { encodeYaml } from '@postern/apis';
import { configDir, loadSession, removeSession, resolveDomain, saveSession } from './config.js';
import { notImplemented, program, run } from './command.js';
import type { Io } from './io.js';
import { parseOutput, table, until } from './output.js';
import { clientFor, connect } from './session.js';
import { caFingerprint, fetchClusterCa } from './tofu.js';

/** `postern`: the client CLI (login, logout, status, get service; connect arrives with tunnels). */
export async function main(argv: readonly string[], io: Io): Promise<number> {
  const p = program('postern', 'Postern client: log in to a cluster and reach its Services.', io);
  p.option('--domain <domain>', 'cluster domain (default: $POSTERN_DOMAIN, or the only one logged in to)');
  const domainOf = () => p.opts<{ domain?: string }>().domain;

  p.command('login')
    .description('log in to a cluster and keep the session under your config folder (0600)')
    .option('--auth-token <token>', 'an auth token from `posternctl create credential` or `posternd init`')
    .option('--api <host:port>', 'API address (default: api.<domain>:443)')
    .option('--ca <file>', 'PEM file of the cluster CA to trust, instead of trusting on first use')
    .option('--web', 'log in with the browser (OIDC)')
    .option('--assertion <token>', 'log in with a workload identity token')
    .action(async (o: { authToken?: string; api?: string; ca?: string; web?: boolean; assertion?: string }) => {
      const domain = domainOf() ?? io.env.POSTERN_DOMAIN;
      if (!domain) throw new PosternError('ERR_USAGE', 'login needs --domain (or POSTERN_DOMAIN)');
      if (o.web || o.assertion) notImplemented('login with the browser (OIDC) or a workload assertion', 'use --auth-token for now');
      const token = o.authToken ?? io.env.POSTERN_AUTH_TOKEN;
      if (!token) throw new PosternError('ERR_USAGE', 'login needs --auth-token <token> (browser login is not available yet)');
      const previous = loadSession(io, domain);
      const api = o.api ?? io.env.POSTERN_API ?? previous?.api ?? `api.${domain}:443`;
      let ca: string;
      if (o.ca) {
        ca = readFileSync(resolve(io.cwd, o.ca), 'utf8');
      } else {
        const fetched = await fetchClusterCa(api);
        if (previous && previous.api === api && previous.caFingerprint !== fetched.fingerprint) {
          throw new PosternError(
            'ERR_TLS_PIN_MISMATCH',
            `the cluster at ${api} presents CA ${fetched.fingerprint}, but ${previous.caFingerprint} was pinned at the last login. If the cluster was re-created on purpose, run \`postern logout --domain ${domain}\` first or pass --ca FILE`,
          );
        }
        if (!previous || previous.caFingerprint !== fetched.fingerprint) io.err(`Trusting the cluster CA ${fetched.fingerprint} (first use; posternd printed its fingerprint at start)\n`);
        ca = fetched.pem;
      }
      const client = clientFor({ api, ca, domain });
      try {
        const t = await client.authenticateWithAuthToken(token);
        saveSession(io, {
          domain,
          api,
          ca,
          caFingerprint: caFingerprint(ca),
          accessToken: t.accessToken,
          refreshToken: t.refreshToken,
          accessTokenExpiresAt: new Date(Date.now() + t.expiresIn * 1000).toISOString(),
          sessionName: t.sessionName,
        });
        const authed = clientFor({ api, ca, domain }, () => t.accessToken);
        try {
          const st = await authed.status();
          io.out(`Logged in to ${domain} as ${String(st.user?.metadata?.name)} (session ${t.sessionName}).\n`);
        } finally {
          authed.close();
        }
      } finally {
        client.close();
      }
    });

  p.command('logout')
    .description('end the session on the cluster and forget it here')
    .action(async () => {
      const domain = resolveDomain(io, domainOf());
      const saved = loadSession(io, domain);
      if (!saved) throw new PosternError('ERR_NOT_LOGGED_IN', `not logged in to ${domain}`);
      const conn = connect(io, domain);
      try {
        await conn.call((c) => c.logout());
      } catch (err) {
        // A session that already ended on the cluster is still forgotten here.
        if (!isPosternError(err) || !['ERR_TOKEN_INVALID', 'ERR_TOKEN_EXPIRED', 'ERR_NOT_LOGGED_IN'].includes(err.code)) throw err;
      } finally {
        conn.close();
      }
      removeSession(io, domain);
      io.out(`Logged out of ${domain}.\n`);
    });

  p.command('status')
    .description('who you are on the cluster, and your session')
    .option('-o, --output <format>', 'table, yaml or json')
    .action(async (o: { output?: string }) => {
      const format = parseOutput(o.output);
      const conn = connect(io, domainOf());
      try {
        const st = await conn.call((c) => c.status());
        const session = st.session as { metadata?: { name?: string }; spec?: { expiresAt?: string }; status?: { type?: string; authentication?: { accessTokenExpiresAt?: string } } };
        const summary = {
          domain: conn.session.domain,
          api: conn.session.api,
          user: (st.user as { metadata?: { name?: string } }).metadata?.name,
          userType: (st.user as { spec?: { type?: string } }).spec?.type,
          groups: st.groups,
          session: session.metadata?.name,
          sessionType: session.status?.type,
          sessionExpiresAt: session.spec?.expiresAt,
          accessTokenExpiresAt: conn.session.accessTokenExpiresAt,
          ...(await tunnelSummary(io, conn.session.domain)),
        };
        if (format === 'json') io.out(JSON.stringify(summary, null, 2) + '\n');
        else if (format === 'yaml') io.out(encodeYaml([summary]));
        else {
          io.out(
            table(
              ['FIELD', 'VALUE'],
              [
                ['Domain', summary.domain],
                ['API', summary.api],
                ['User', `${summary.user} (${summary.userType})`],
                ['Groups', summary.groups.join(', ') || '-'],
                ['Session', `${summary.session} (${summary.sessionType}), ends ${until(summary.sessionExpiresAt)}`],
                ['Access token', `expires ${until(summary.accessTokenExpiresAt)}`],
                ['Tunnel', summary.connected ? `up on ${summary.tunnel!.interface}: ${summary.tunnel!.addresses.join(', ')} via ${summary.tunnel!.gatewayName ? `gateway ${summary.tunnel!.gatewayName} (${summary.tunnel!.gateway})` : summary.tunnel!.gateway}` : 'not connected'],
                ...(summary.connected
                  ? [['Handshake', summary.tunnel!.handshakeAgeSeconds === undefined ? 'none yet' : `${summary.tunnel!.handshakeAgeSeconds} s ago`], ['Traffic', `${summary.tunnel!.rxBytes} bytes in, ${summary.tunnel!.txBytes} bytes out`]]
                  : []),
              ],
            ),
          );
        }
      } finally {
        conn.close();
      }
    });

  const get = p.command('get').description('list what you can reach');
  get
    .command('service [name]')
    .alias('services')
    .alias('svc')
    .description('the Services your policies let you reach')
    .option('-n, --namespace <ns>', 'only this namespace')
    .option('-o, --output <format>', 'table, yaml or json')
    .action(async (name: string | undefined, o: { namespace?: string; output?: string }) => {
      const format = parseOutput(o.output);
      const conn = connect(io, domainOf());
      try {
        let items = await conn.call((c) => c.listServices(o.namespace ?? ''));
        if (name) {
          const [svc, ns] = name.split('.');
          items = items.filter((s) => s.name === svc && (!ns || s.namespace === ns));
          if (items.length === 0) throw new PosternError('ERR_NOT_FOUND', `no Service "${name}" that you may reach`);
        }
        if (format === 'json') io.out(JSON.stringify(name ? items[0] : { items }, null, 2) + '\n');
        else if (format === 'yaml') io.out(encodeYaml(name ? items : [{ items }]));
        else if (items.length === 0) io.err('No Services you may reach.\n');
        else io.out(table(['NAME', 'NAMESPACE', 'MODE', 'PORT', 'PRIVATE HOSTNAME', 'PUBLIC HOSTNAME'], items.map((s) => [s.name, s.namespace, s.mode, String(s.port || '-'), s.privateHostname, s.publicHostname || '-'])));
      } finally {
        conn.close();
      }
    });

  p.command('connect')
    .description('open a WireGuard tunnel to the cluster: routes for the cluster ranges only, DNS for local.<domain>')
    .option('-d, --detach', 'run in the background; `postern disconnect` ends it')
    .option('--implementation <kind>', 'kernel or tun (wireguard-go); default: kernel if present', 'auto')
    .option('--no-dns', 'leave DNS alone')
    .option('--tunnel-mode <mode>', 'wireguard or quic', 'wireguard')
    .option('--export-wireguard <file>', 'write a wg-quick configuration for a stock WireGuard client instead of creating the tunnel')
    .option('--interface <name>', 'WireGuard interface name (default: pst + a hash of the domain)')
    .option('--gateway <name>', 'use this gateway (default: the cluster\'s choice for this session, moving to another when it goes away)')
    .option('--daemon-child', 'internal: the detached process of --detach')
    .action(async (o: { detach?: boolean; implementation: string; dns: boolean; tunnelMode: string; exportWireguard?: string; daemonChild?: boolean; interface?: string; gateway?: string }) => {
      const domain = resolveDomain(io, domainOf());
      if (o.tunnelMode !== 'wireguard') notImplemented(`tunnel mode ${o.tunnelMode}`, 'only wireguard is available');
      const impl = o.implementation === 'tun' ? 'userspace' : o.implementation === 'kernel' ? 'kernel' : 'auto';
      const progress = (t: string) => io.err(`${t}\n`);
      const previous = readTunnelState(io, domain);
      if (previous && previous.pid !== process.pid && isAlive(previous.pid) && !o.exportWireguard) {
        throw new PosternError('ERR_USAGE', `already connected to ${domain} (pid ${previous.pid}); run \`postern disconnect\` first`);
      }
      if (previous && !isAlive(previous.pid)) {
        progress(`cleaning up after an earlier connect that did not exit cleanly (pid ${previous.pid})`);
        await tearDown(io, previous);
      }
      if (o.detach && !o.daemonChild && !o.exportWireguard) return detach(io, domain, argv, progress);
      const conn = connect(io, domain);
      const keys = generateKeyPair();
      progress(`connecting to ${domain} (session ${conn.session.sessionName})`);
      let resolveEnd!: (code: number) => void;
      const ended = new Promise<number>((r) => (resolveEnd = r));
      let state: TunnelState | undefined;
      let firstSeen!: (s: ConnectState) => void;
      let firstFailed!: (e: Error) => void;
      const first = new Promise<ConnectState>((resolve, reject) => {
        firstSeen = resolve;
        firstFailed = reject;
      });
      let gotFirst = false;
      // The control stream: the first state brings the tunnel up; later states update peers.
      // If the API goes away (restart, network), the tunnel stays and the stream is opened again
      // with the same key; only a clean end (session disconnected) or an auth failure ends it.
      let stream: { cancel(): void } = { cancel: () => {} };
      let stopping = false;
      let backoff = 250;
      const open = () => {
        stream = conn.client.connect(
          { wireguardPublicKey: keys.publicKey, ...clientInfo() },
          (st) => {
            backoff = 250;
            if (!gotFirst) {
              gotFirst = true;
              return firstSeen(st);
            }
            if (state) void follow(st).catch((err: Error) => progress(`could not update the gateway: ${err.message}`));
          },
          (err) => {
            if (stopping) return;
            if (!gotFirst) return firstFailed(err ?? new PosternError('ERR_STORE_UNAVAILABLE', 'the cluster closed the connection'));
            const transient = err && isPosternError(err) && ['ERR_STORE_UNAVAILABLE', 'ERR_INTERNAL', 'ERR_TOKEN_EXPIRED'].includes(err.code);
            if (transient) {
              progress(`lost the control connection (${err.message}); the tunnel stays up, retrying in ${backoff} ms`);
              setTimeout(() => {
                if (stopping) return;
                void conn.call(async (c) => c).then(open, open);
              }, backoff);
              backoff = Math.min(backoff * 2, 5000);
              return;
            }
            progress(err ? `the cluster ended the tunnel: ${err.message}` : 'the cluster ended the tunnel (session disconnected or revoked)');
            resolveEnd(1);
          },
        );
      };
      // A later state may list other gateways (stay on ours while it is listed, else move) or
      // other Services the session may reach (say so).
      let reachable = new Set<string>();
      const follow = async (st: ConnectState) => {
        const s = state!;
        const now = new Set(st.services.map(serviceUrl));
        for (const u of now) if (!reachable.has(u)) progress(`now reachable: ${u}`);
        for (const u of reachable) if (!now.has(u)) progress(`no longer reachable: ${u}`);
        reachable = now;
        const next = chooseGateway(st.gateways, { ...(o.gateway ? { pinned: o.gateway } : {}), ...(s.gatewayName ? { current: s.gatewayName } : {}) });
        await new WireGuardInterface(s.iface).syncPeers([gatewayPeer(next, st.keepaliveSeconds)]);
        if (next.name !== s.gatewayName || next.endpoint !== s.gateway) {
          progress(`now through gateway ${next.name} (${next.endpoint}); was ${s.gatewayName ?? '?'} (${s.gateway ?? '?'})`);
          s.gatewayName = next.name;
          s.gateway = next.endpoint;
          writeTunnelState(io, s);
        }
      };
      open();
      const st = await first;
      const gateway = chooseGateway(st.gateways, o.gateway ? { pinned: o.gateway } : {});
      if (o.exportWireguard) {
        stopping = true;
        stream.cancel();
        writeFileSync(resolve(io.cwd, o.exportWireguard), wgQuickConfig(st, gateway, keys.privateKey, { dns: o.dns }), { mode: 0o600 });
        io.out(`Wrote ${o.exportWireguard} for session ${st.session} (${st.addresses.join(', ')}). Bring it up with: wg-quick up ${o.exportWireguard}\n`);
        conn.close();
        return;
      }
      try {
        state = await bringUp(io, domain, st, gateway, keys.privateKey, { implementation: impl, dns: o.dns, log: progress, ...(o.interface ? { iface: o.interface } : {}) });
      } catch (err) {
        stopping = true;
        stream.cancel();
        const left = readTunnelState(io, domain);
        if (left) await tearDown(io, left).catch(() => {});
        await conn.client.disconnect().catch(() => {});
        conn.close();
        throw err;
      }
      io.out(`Connected to ${domain}: ${st.addresses.join(', ')} via gateway ${gateway.name} (${state.gateway}, interface ${state.iface}).\n`);
      if (st.services.length) io.out(`You can reach:\n${st.services.map((x) => `  ${serviceUrl(x)}`).join('\n')}\n`);
      else io.out('No Services you may reach yet.\n');
      reachable = new Set(st.services.map(serviceUrl));
      const onSignal = () => resolveEnd(0);
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const code = await ended;
      stopping = true;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      stream.cancel();
      if (code === 0) await conn.client.disconnect().catch(() => {});
      await tearDown(io, state);
      conn.close();
      progress(`disconnected from ${domain}`);
      if (code !== 0) throw new PosternError('ERR_TOKEN_INVALID', 'the tunnel was closed by the cluster');
    });

  p.command('disconnect')
    .description('close the tunnel and restore DNS (also cleans up after a crashed connect)')
    .action(async () => {
      const domain = resolveDomain(io, domainOf());
      const state = readTunnelState(io, domain);
      if (!state) {
        io.err(`not connected to ${domain}\n`);
        return;
      }
      if (state.pid !== process.pid && isAlive(state.pid)) {
        signal(state.pid, 'SIGTERM');
        for (let i = 0; i < 100 && existsSync(tunnelStateFile(io, domain)); i++) await new Promise((r) => setTimeout(r, 50));
        if (!existsSync(tunnelStateFile(io, domain))) {
          io.out(`Disconnected from ${domain}.\n`);
          return;
        }
        signal(state.pid, 'SIGKILL');
      }
      // The connect process is gone (killed, crashed): undo what it left and tell the cluster.
      await tearDown(io, state);
      try {
        const conn = connect(io, domain);
        await conn.call((c) => c.disconnect());
        conn.close();
      } catch {
        // The tunnel is down here either way; the cluster drops the peer when the session ends.
      }
      io.out(`Disconnected from ${domain}.\n`);
    });

  return run(p, argv, io);
}

/**
 * `connect -d`: starts this same command again as a detached process and waits until its
 * tunnel is up (or it failed), then returns; the process keeps the tunnel until `disconnect`.
 */
/** How a user reaches a Service through the tunnel. */
function serviceUrl(s: { privateHostname: string; port: number; mode: string }): string {
  // gRPC clients (grpcurl, grpc-js) take host:port.
  if (s.mode === 'GRPC') return `${s.privateHostname}:${s.port || 80}`;
  return `http://${s.privateHostname}${s.port && s.port !== 80 ? `:${s.port}` : ''}/`;
}

async function detach(io: Io, domain: string, argv: readonly string[], progress: (s: string) => void): Promise<void> {
  const logFile = `${configDir(io)}/tunnels/${domain}.log`;
  mkdirSync(`${configDir(io)}/tunnels`, { recursive: true, mode: 0o700 });
  const out = openSync(logFile, 'a', 0o600);
  const args = [process.argv[1]!, ...argv.filter((a) => a !== '-d' && a !== '--detach'), '--daemon-child', '--domain', domain];
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', out, out], env: { ...process.env, ...io.env } });
  child.unref();
  let exited = false;
  child.once('exit', () => (exited = true));
  for (let i = 0; i < 300; i++) {
    const st = readTunnelState(io, domain);
    if (st?.up && st.pid === child.pid) {
      io.out(`Connected to ${domain} in the background (pid ${child.pid}): ${st.addresses.join(', ')} via gateway ${st.gatewayName ?? '?'} (${st.gateway}). Log: ${logFile}\n`);
      return;
    }
    if (exited) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const log = existsSync(logFile) ? readFileSync(logFile, 'utf8').split('\n').filter(Boolean).slice(-5).join('\n') : '';
  progress(log);
  throw new PosternError('ERR_USAGE', `the background connect did not come up (see ${logFile})`);
}

/** The local tunnel as `wg` sees it, for `postern status`. */
async function tunnelSummary(io: Io, domain: string): Promise<{ connected: boolean; tunnel?: { interface: string; addresses: string[]; gateway: string; gatewayName?: string; handshakeAgeSeconds?: number; rxBytes: number; txBytes: number } }> {
  const st = readTunnelState(io, domain);
  if (!st?.up || !isAlive(st.pid)) return { connected: false };
  let rx = 0;
  let tx = 0;
  let handshake = 0;
  try {
    const wg = await new WireGuardInterface(st.iface).status();
    for (const p of wg.peers) {
      rx += p.rxBytes;
      tx += p.txBytes;
      handshake = Math.max(handshake, p.latestHandshake);
    }
  } catch {
    // Not root, or another namespace: show what the state file knows.
  }
  return {
    connected: true,
    tunnel: { interface: st.iface, addresses: st.addresses, gateway: st.gateway ?? '', ...(st.gatewayName ? { gatewayName: st.gatewayName } : {}), ...(handshake ? { handshakeAgeSeconds: Math.max(0, Math.round(Date.now() / 1000 - handshake)) } : {}), rxBytes: rx, txBytes: tx },
  };
}

/** Sends a signal, ignoring a process that is already gone. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}
