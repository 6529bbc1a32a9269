/**
 * A proxy worker process (`posternd up --proxy-workers N`, started by ProxyWorkers): serves the
 * public listener and the Service listeners from a copy of the primary's cache, fed over IPC. It holds no database
 * connection, no private signing key and not the CA key.
 */
import { createSecureContext } from 'node:tls';
import { KeyRing, verifyAccessToken, type StoredKey } from '@postern/authserver';
import { Proxy, UpstreamPools, proxyCacheKinds, type RateCounter } from '@postern/proxy';
import { ResourceCache } from '@postern/store';
import { posterndLogger } from './log.js';
import type { FromWorker, ToWorker } from './proxy-workers.js';

const { logger, flush } = posterndLogger({ component: 'proxy-worker' });
const send = (m: FromWorker) => process.send!(m);

/** Requests to the primary, answered by id. */
let nextId = 1;
const waiting = new Map<number, (m: ToWorker) => void>();
type Question = { t: 'cert'; name: string } | { t: 'rate'; key: string; windowMs: number; now: number };
function ask<T extends ToWorker>(m: Question): Promise<T> {
  const id = nextId++;
  return new Promise((resolve) => {
    waiting.set(id, (reply) => resolve(reply as T));
    send({ ...m, id } as FromWorker);
  });
}

/** Rate limits count in the primary, so a limit holds whichever worker takes the request. */
const counter: RateCounter = {
  hit: async (key, windowMs, now) => {
    const r = await ask<Extract<ToWorker, { t: 'rate' }>>({ t: 'rate', key, windowMs, now });
    return { start: r.start, count: r.count };
  },
};

let cache: ResourceCache | undefined;
let ring: KeyRing | undefined;
let proxy: Proxy | undefined;

async function init(m: Extract<ToWorker, { t: 'init' }>): Promise<void> {
  cache = new ResourceCache(undefined, [...proxyCacheKinds]);
  cache.load(m.items, m.version);
  ring = new KeyRing(m.keys);
  const c = cache;
  const verifier = { verifyAccessToken: (token: string) => verifyAccessToken(ring!, c, new Date(), token) };
  proxy = new Proxy({ cache: c, auth: verifier, domain: m.domain, logger, rateCounter: counter, ...(m.upstreamTimeoutMs ? { pools: new UpstreamPools({ headersTimeoutMs: m.upstreamTimeoutMs }) } : {}) });
  const domain = m.domain;
  const pub = m.public;
  const port = !pub
    ? undefined
    : pub.plaintext
      ? await proxy.listenPublicPlaintext(pub.host, pub.port)
      : await proxy.listenPublic(pub.host, pub.port, {
          key: pub.fallback!.key,
          cert: pub.fallback!.cert,
          SNICallback: (servername, cb) => {
            const name = servername.toLowerCase();
            if (name !== domain && !name.endsWith(`.${domain}`)) return cb(null, undefined);
            ask<Extract<ToWorker, { t: 'cert' }>>({ t: 'cert', name }).then(
              (r) => (r.key && r.cert ? cb(null, createSecureContext({ key: r.key, cert: r.cert })) : cb(new Error(r.error ?? 'no certificate'), undefined)),
              (err: Error) => cb(err, undefined),
            );
          },
        });
  for (const l of m.services) await proxy.listenService(l.fullName, l.host, l.port);
  send({ t: 'listening', port });
}

process.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'init':
      init(m).catch((err: Error) => {
        logger.error({ err: err.message }, 'proxy worker could not start');
        flush();
        process.exit(1);
      });
      return;
    case 'listen':
      proxy!.listenService(m.service.fullName, m.service.host, m.service.port).then(
        (port) => send({ t: 'done', id: m.id, port }),
        (err: Error) => send({ t: 'done', id: m.id, error: err.message }),
      );
      return;
    case 'unlisten':
      proxy!.unlistenService(m.fullName, m.host).then(
        () => send({ t: 'done', id: m.id }),
        (err: Error) => send({ t: 'done', id: m.id, error: err.message }),
      );
      return;
    case 'event':
      cache?.apply(m.ev);
      return;
    case 'resync':
      cache?.load(m.items, m.version);
      return;
    case 'keys':
      ring = new KeyRing(m.keys as StoredKey[]);
      return;
    case 'cert':
    case 'rate': {
      const done = waiting.get(m.id);
      waiting.delete(m.id);
      done?.(m);
      return;
    }
  }
});

send({ t: 'ready' });

const stop = () => {
  void (proxy?.close() ?? Promise.resolve()).finally(() => {
    flush();
    process.exit(0);
  });
};
process.on('SIGTERM', stop);
process.on('SIGINT', () => {
  // The terminal's Ctrl-C reaches the whole group: the primary decides when workers stop.
});
// The primary is gone: so is the reason to serve.
process.on('disconnect', stop);
