import { availableParallelism, hostname } from 'node:os';
import { resolve } from 'node:path';
import { PosternError } from '@postern/apis';
import { initCluster, startCluster } from '@postern/cluster';
import { openStore } from '@postern/store';
import { program, run } from './command.js';
import type { Io } from './io.js';

function nextSteps(domain: string, address: string, token: string | undefined, fingerprint: string | undefined, publicAddress: string | undefined, gateway?: string): string {
  const lines = [
    `Postern is running for domain ${domain}`,
    `  API        ${address}${fingerprint ? ` (TLS; cluster CA ${fingerprint})` : ' (plaintext)'}`,
    ...(publicAddress ? [`  Public     <service>.${domain} served on ${publicAddress}`] : []),
    ...(gateway ? [`  Gateway    ${gateway}`] : []),
    '',
  ];
  if (token) {
    lines.push(
      'Root auth token (shown once; valid for one login within 7 days):',
      `  ${token}`,
      '',
      'Next, in another terminal:',
      `  npx postern login --domain ${domain} --api ${address} --auth-token ${token}`,
    );
  } else {
    lines.push(
      'The cluster was already initialized. Log in with an auth token, or make a new root token with',
      `  npx posternd init --domain ${domain} --new-root-token   (same --data or --database)`,
      '',
      'Next:',
      `  npx postern login --domain ${domain} --api ${address} --auth-token <token>`,
    );
  }
  lines.push(
    `  npx posternctl apply ../shared/examples/01-users-and-policies.yaml`,
    '  npx posternctl get user',
    '  npx posternctl create credential --user alice --type auth-token',
    '',
    'Stop with Ctrl-C.',
    '',
  );
  return lines.join('\n');
}

/** How long posternd may take to stop (SIGINT, SIGTERM) before it exits anyway. */
const shutdownLimitMs = 20_000;

/** `posternd`: runs the server components (all in one process with `up`, or one alone). */
function workerCount(value: string): number {
  if (value === 'auto') return availableParallelism();
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 256) throw new PosternError('ERR_USAGE', `--proxy-workers takes a whole number from 0 to 256, or "auto", not "${value}"`);
  return n;
}

function positiveNumber(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new PosternError('ERR_USAGE', `${flag} must be a positive number of seconds, not "${value}"`);
  return n;
}

export async function main(argv: readonly string[], io: Io, onStarted?: (stop: () => Promise<void>) => void): Promise<number> {
  const p = program('posternd', 'Postern server: the control plane and, later, the gateway.', io);
  const storeFlags = (c: ReturnType<typeof p.command>) =>
    c
      .option('--data <dir>', 'embedded database folder (default: ./.postern)')
      .option('--database <url>', 'a postgres:// URL instead of the embedded database (or $POSTERN_DATABASE_URL)');
  // Runs until SIGINT or SIGTERM, then stops every component. A stop that fails or takes longer
  // than shutdownLimitMs is an exit code of 1 with the reason (the log names a component that is
  // slow to stop); a second signal meanwhile ends the process at once (the default action).
  // `ready` prints what says posternd is up, once the signals are taken: a supervisor that sends
  // SIGTERM as soon as it reads that gets a clean stop, never the default action.
  const until = (stop: () => Promise<void>, ready: () => void) =>
    new Promise<void>((done, fail) => {
      const shutdown = (signal?: NodeJS.Signals) => {
        process.off('SIGINT', shutdown);
        process.off('SIGTERM', shutdown);
        io.err(`Stopping${signal ? ` (${signal})` : ''}: answering requests in progress; a second signal exits at once.\n`);
        const limit = setTimeout(() => fail(new PosternError('ERR_INTERNAL', `posternd did not finish stopping within ${shutdownLimitMs / 1000} s; exiting anyway`)), shutdownLimitMs);
        limit.unref();
        stop().then(
          () => {
            clearTimeout(limit);
            io.err('Stopped.\n');
            done();
          },
          (err: unknown) => {
            clearTimeout(limit);
            fail(err);
          },
        );
      };
      process.on('SIGINT', shutdown);
      process.on('SIGTERM', shutdown);
      ready();
      onStarted?.(async () => shutdown());
    });

  storeFlags(
    p
      .command('up')
      .description('run every component in one process, initializing the cluster on first start')
      .option('--domain <domain>', 'the cluster domain (required the first time)')
      .option('--listen <host:port>', 'API address', '127.0.0.1:8443')
      .option('--public-listen <host:port>', 'HTTPS address for public Services, or "off"', '127.0.0.1:8444')
      .option('--public-plaintext', 'serve public Services in plain HTTP (TLS terminated by a load balancer in front)')
      .option('--gateway-endpoint <host>', 'also be a gateway: the address clients dial for WireGuard (needs root)')
      .option('--gateway-name <name>', 'this gateway\'s name (default: the host name)')
      .option('--wg-interface <name>', 'WireGuard interface name (unique on the host)', 'pstgw0')
      .option('--wg-port <port>', 'WireGuard UDP port', '53820')
      .option('--implementation <kind>', 'kernel, userspace (wireguard-go) or auto', 'auto')
      .option('--dns-forwarder <addresses...>', 'resolvers for names outside local.<domain>')
      .option('--proxy-workers <n>', 'serve the public listener from N worker processes (one Node process forwards ~20,000 requests/s; "auto": one per CPU)', '0')
      .option('--gateway-heartbeat <seconds>', 'how often this gateway tells the cluster it is alive; clients leave a gateway silent for 3 beats', '10'),
  ).action(async (o: { domain?: string; data?: string; database?: string; listen: string; publicListen: string; publicPlaintext?: boolean; gatewayEndpoint?: string; gatewayName?: string; wgInterface: string; wgPort: string; implementation: string; dnsForwarder?: string[]; gatewayHeartbeat: string; proxyWorkers: string }) => {
    const cluster = await startCluster({
      ...(o.domain ? { domain: o.domain } : {}),
      dataDir: resolve(io.cwd, o.data ?? '.postern'),
      ...(o.database ?? io.env.POSTERN_DATABASE_URL ? { database: o.database ?? io.env.POSTERN_DATABASE_URL } : {}),
      listen: o.listen,
      publicListen: o.publicListen,
      ...(o.publicPlaintext ? { publicPlaintext: true } : {}),
      proxyWorkers: workerCount(o.proxyWorkers),
      ...(o.gatewayEndpoint
        ? {
            gateway: {
              name: o.gatewayName ?? hostname(),
              endpoint: o.gatewayEndpoint,
              interfaceName: o.wgInterface,
              listenPort: Number(o.wgPort),
              implementation: o.implementation as 'auto' | 'kernel' | 'userspace',
              heartbeatSeconds: positiveNumber('--gateway-heartbeat', o.gatewayHeartbeat),
              ...(o.dnsForwarder ? { dnsForwarders: [o.dnsForwarder].flat() } : {}),
            },
          }
        : {}),
      autoInit: true,
    });
    await until(cluster.close, () =>
      io.out(nextSteps(cluster.domain, cluster.address, cluster.rootToken, cluster.caFingerprint, cluster.publicAddress, o.gatewayEndpoint ? `WireGuard on ${o.gatewayEndpoint}:${o.wgPort} (${o.wgInterface}), private DNS on 100.64.0.53` : undefined)),
    );
  });

  storeFlags(
    p
      .command('apiserver')
      .description('run the API server alone (the cluster must be initialized: `posternd init`)')
      .option('--listen <host:port>', 'API address', '127.0.0.1:8443')
      .option('--cert-name <name...>', 'extra DNS names for the server certificate'),
  ).action(async (o: { data?: string; database?: string; listen: string; certName?: string[] }) => {
    const cluster = await startCluster({
      dataDir: resolve(io.cwd, o.data ?? '.postern'),
      ...(o.database ?? io.env.POSTERN_DATABASE_URL ? { database: o.database ?? io.env.POSTERN_DATABASE_URL } : {}),
      listen: o.listen,
      autoInit: false,
      ...(o.certName ? { certNames: o.certName } : {}),
    });
    await until(cluster.close, () => io.err(`API server for ${cluster.domain} on ${cluster.address}\n`));
  });

  storeFlags(
    p
      .command('init')
      .description('initialize a cluster: root user, its policy, keys; prints a one-time root auth token')
      .requiredOption('--domain <domain>', 'the cluster domain')
      .option('--new-root-token', 'on an initialized cluster, make a new one-time root auth token'),
  ).action(async (o: { domain: string; data?: string; database?: string; newRootToken?: boolean }) => {
    const database = o.database ?? io.env.POSTERN_DATABASE_URL;
    const store = await openStore(database ? { database } : { dataDir: `${resolve(io.cwd, o.data ?? '.postern')}/db` });
    try {
      const res = await initCluster(store, { domain: o.domain, now: () => new Date(), ...(o.newRootToken ? { newRootToken: true } : {}) });
      if (!res.rootToken) throw new PosternError('ERR_USAGE', `the cluster for ${res.info.domain} is already initialized; add --new-root-token for another root login`);
      io.err(res.created ? `Initialized the cluster for ${o.domain}.\n` : `New root auth token for ${o.domain}:\n`);
      io.out(`${res.rootToken}\n`);
    } finally {
      await store.close();
    }
  });

  return run(p, argv, io);
}
