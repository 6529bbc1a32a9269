import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PosternError } from '@postern/apis';
import { ApiServer, apiCacheKinds } from '@postern/apiserver';
import { AuthServer, ensureSigningKeys } from '@postern/authserver';
import { Proxy, UpstreamPools } from '@postern/proxy';
import { ResourceCache, openStore, type SqlStore } from '@postern/store';
import { createSecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { closeInOrder, type Cleanup } from './close.js';
import { posterndLogger } from './log.js';
import { ensureClusterInfo, initCluster } from './init.js';
import { GatewayHost, type GatewayOptions } from './gateway.js';
import { Controller } from '@postern/controller';
import { LeafIssuer, clusterTls } from './tls.js';
import { ProxyWorkers } from './proxy-workers.js';

export interface ClusterOptions {
  /** Cluster domain; required the first time, read from the data afterwards. */
  domain?: string;
  /** PGlite data folder; default `./.postern`. Ignored when `database` is set. */
  dataDir?: string;
  /** A `postgres://` URL instead of the embedded database. */
  database?: string;
  /** API listen address, `host:port`; default 127.0.0.1:8443. */
  listen?: string;
  /** Initialize the cluster if it is not yet (true for `up`, false for a lone `apiserver`). */
  autoInit?: boolean;
  /** Plaintext gRPC, for in-process tests only. */
  insecure?: boolean;
  /** Extra names for the server certificate (the public DNS name of the API). */
  certNames?: string[];
  /** Public HTTPS listener of the proxy, `host:port`; default 127.0.0.1:8444; `off` for none. */
  publicListen?: string;
  /** Serve the public listener in plain HTTP, for a TLS-terminating load balancer in front. */
  publicPlaintext?: boolean;
  /** Run the proxy (default true). */
  proxy?: boolean;
  /** How long the proxy waits for an upstream's response headers before answering 504; default 60 s. */
  upstreamTimeoutMs?: number;
  /** Serve the public listener from this many worker processes (0: in this process). */
  proxyWorkers?: number;
  /** Run this host as a gateway too (WireGuard agent, private DNS, Service listeners). Needs root. */
  gateway?: GatewayOptions;
  logger?: Logger;
  now?: () => Date;
}

export interface RunningCluster {
  domain: string;
  port: number;
  address: string;
  caPem?: string;
  caFingerprint?: string;
  /** Set only on the run that initialized the cluster. */
  rootToken?: string;
  /** `host:port` of the public HTTPS listener, when there is one. */
  publicAddress?: string;
  store: SqlStore;
  /** The identity-aware proxy, when running. */
  proxy?: Proxy;
  /** The gateway parts, when this host is a gateway. */
  gateway?: GatewayHost;
  ipv6Prefix: string;
  logger: Logger;
  close(): Promise<void>;
}

function splitListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(listen.slice(i + 1)) };
}

const keyCheckMs = 6 * 3_600_000;

/**
 * The embedded database has one writer: a second posternd on the same folder would corrupt it.
 * A pid file taken with O_EXCL says who holds the folder; a stale one (dead pid) is taken over.
 */
function lockDataDir(dir: string): () => void {
  const file = join(dir, 'posternd.pid');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx', mode: 0o600 });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(readFileSync(file, 'utf8'));
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = true;
      } catch {
        alive = false;
      }
      if (alive) throw new PosternError('ERR_USAGE', `another posternd (pid ${pid}) is using ${dir}; stop it first or use another --data folder`);
      rmSync(file, { force: true });
    }
  }
  throw new PosternError('ERR_USAGE', `cannot take the lock on ${dir}`);
}

/** Starts every server component present so far (API, auth) in this process. */
export async function startCluster(opts: ClusterOptions): Promise<RunningCluster> {
  const now = opts.now ?? (() => new Date());
  const cleanups0: (() => void)[] = [];
  const own = opts.logger ? undefined : posterndLogger();
  const logger = opts.logger ?? own!.logger;
  if (own) cleanups0.push(own.flush);
  const dataDir = opts.database ? undefined : resolve(opts.dataDir ?? '.postern');
  let unlock: (() => void) | undefined;
  if (dataDir) {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    unlock = lockDataDir(dataDir);
  }
  let store: SqlStore;
  try {
    store = await openStore({ ...(opts.database ? { database: opts.database } : { dataDir: `${dataDir}/db` }), now });
  } catch (err) {
    unlock?.();
    throw err;
  }
  const cleanups: Cleanup[] = [...cleanups0.map((fn): Cleanup => ['the log', fn]), ['the data folder lock', () => unlock?.()], ['the store', () => store.close()]];
  const closeAll = () => closeInOrder(cleanups.reverse(), logger);
  try {
    let info = await ensureClusterInfo(store);
    let rootToken: string | undefined;
    if (!info || (opts.domain && info.domain !== opts.domain)) {
      if (!opts.autoInit && !info) throw new PosternError('ERR_USAGE', 'the cluster is not initialized: run `posternd init --domain <domain>` first');
      if (!opts.domain) throw new PosternError('ERR_USAGE', 'the first start needs --domain (the cluster\'s DNS domain, e.g. example.com)');
      const res = await initCluster(store, { domain: opts.domain, now });
      info = (await ensureClusterInfo(store))!;
      rootToken = res.rootToken;
    }
    let keys = await ensureSigningKeys(store, now());
    const cache = new ResourceCache(store, apiCacheKinds, (msg, err) => logger.warn({ err }, msg));
    await cache.start();
    cleanups.push(['the resource cache', () => cache.close()]);
    const auth = new AuthServer(store, cache, keys, now);
    // Rotate signing keys on schedule; every replica picks up the new ring.
    const keyTimer = setInterval(() => {
      void ensureSigningKeys(store, now())
        .then((k) => {
          if (k.length !== keys.length || k.at(-1)?.kid !== keys.at(-1)?.kid) {
            keys = k;
            auth.setKeys(k);
            workers?.setKeys(k);
            logger.info({ kids: k.map((x) => x.kid) }, 'signing keys rotated');
          }
        })
        .catch((err: unknown) => logger.warn({ err }, 'signing key check failed; will retry'));
    }, keyCheckMs);
    keyTimer.unref();
    cleanups.push(['the signing-key timer', () => clearInterval(keyTimer)]);
    const listen = opts.listen ?? '127.0.0.1:8443';
    const host = listen.slice(0, listen.lastIndexOf(':')).replace(/^\[|\]$/g, '');
    const tls = opts.insecure ? undefined : await clusterTls(store, info.domain, [`api.${info.domain}`, 'localhost', '127.0.0.1', '::1', ...(host && host !== '0.0.0.0' && host !== '::' ? [host] : []), ...(opts.certNames ?? [])], now());
    let proxy: Proxy | undefined;
    let workers: ProxyWorkers | undefined;
    let publicAddress: string | undefined;
    if (opts.proxy !== false) {
      proxy = new Proxy({ cache, auth, domain: info.domain, logger: logger.child({ component: 'proxy' }), now, ...(opts.upstreamTimeoutMs ? { pools: new UpstreamPools({ headersTimeoutMs: opts.upstreamTimeoutMs }) } : {}) });
    }
    const ipv6Prefix = info.ipv6Prefix!;
    const controller = new Controller({ store, cache, ipv6Prefix, now, log: (level, msg, fields) => logger[level](fields ?? {}, msg) });
    await controller.start();
    cleanups.push(['the controller', () => controller.close()]);
    const api = new ApiServer({ store, cache, auth, domain: info.domain, logger, now, ipv6Prefix, ...(tls ? { tls: { key: tls.key, cert: tls.cert } } : {}), ...(proxy ? { proxy: proxy.core } : {}) });
    if (proxy) cleanups.push(['the proxy', () => proxy!.close()]);
    const port = await api.listen(listen);
    cleanups.push(['the API', () => api.close()]);
    if (proxy) {
      const pub = opts.publicListen ?? '127.0.0.1:8444';
      const publicAt = pub === 'off' ? undefined : splitListen(pub);
      // Leaf certificates are for the public HTTPS listener only.
      const issuer = publicAt && !opts.publicPlaintext ? await LeafIssuer.open(store, info.domain, now) : undefined;
      if (opts.proxyWorkers) {
        workers = new ProxyWorkers({
          count: opts.proxyWorkers,
          domain: info.domain,
          ...(publicAt ? { public: { ...publicAt, plaintext: !!opts.publicPlaintext } } : {}),
          cache,
          keys: () => keys,
          ...(issuer ? { certFor: (n: string) => issuer.certFor(n) } : {}),
          ...(opts.upstreamTimeoutMs ? { upstreamTimeoutMs: opts.upstreamTimeoutMs } : {}),
          logger,
        });
        cleanups.push(['the proxy workers', () => workers!.close()]);
        await workers.start();
      }
      if (publicAt) {
        const { host: ph, port: pp } = publicAt;
        const bound = workers ? workers.port! : !issuer ? await proxy.listenPublicPlaintext(ph, pp) : await proxy.listenPublic(ph, pp, {
          ...(await issuer.certFor(`${info.domain}`)),
          SNICallback: (servername, cb) => {
            const name = servername.toLowerCase();
            if (name !== info!.domain && !name.endsWith(`.${info!.domain}`)) return cb(null, undefined);
            issuer.certFor(name).then((c) => cb(null, createSecureContext({ key: c.key, cert: c.cert })), (err: Error) => cb(err, undefined));
          },
        });
        publicAddress = `${ph.includes(':') ? `[${ph}]` : ph}:${bound}`;
      }
    }
    let gateway: GatewayHost | undefined;
    if (opts.gateway) {
      if (!proxy) throw new PosternError('ERR_USAGE', 'a gateway needs the proxy');
      gateway = new GatewayHost({ store, cache, listeners: workers ?? proxy, domain: info.domain, ipv6Prefix, dataDir: dataDir ?? resolve('.postern'), logger: logger.child({ component: 'gateway' }) }, opts.gateway);
      await gateway.start();
      // The interface stays when posternd stops: a restart reconciles it without dropping tunnels.
      cleanups.push(['the gateway', () => gateway!.close()]);
    }
    logger.info({ domain: info.domain, address: `${host}:${port}`, public: publicAddress, gateway: opts.gateway?.name, database: store.driver.description, tls: !!tls }, 'posternd is up');
    return {
      domain: info.domain,
      port,
      address: `${host.includes(':') ? `[${host}]` : host}:${port}`,
      ...(tls ? { caPem: tls.caPem, caFingerprint: tls.caFingerprint } : {}),
      ...(rootToken ? { rootToken } : {}),
      ...(publicAddress ? { publicAddress } : {}),
      ...(proxy ? { proxy } : {}),
      ...(gateway ? { gateway } : {}),
      ipv6Prefix,
      store,
      logger,
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
