import { createHash } from 'node:crypto';
import { rootCertificates } from 'node:tls';
import { Agent, Pool } from 'undici';
import { H1Pool } from './h1/client.js';
import type { Endpoint, Route } from './routes.js';

/** How long an endpoint that failed is skipped (passive health). */
export const ejectMs = 10_000;

type TlsSettings = Pick<Route, 'insecureSkipVerify' | 'trustedCAs'>;

/**
 * Keep-alive connection pools to upstream origins, shared by every Service that points at the
 * same origin with the same TLS settings: the proxy's own HTTP/1.1 client (`h1/client.ts`) for
 * requests, undici's for WebSocket and other upgrades.
 */
export class UpstreamPools {
  private readonly pools = new Map<string, Pool>();
  private readonly h1Pools = new Map<string, H1Pool>();
  /** The HTTP/1.1 pools a route has used, by origin: the request path skips building the key. */
  private readonly h1ByRoute = new WeakMap<object, Map<string, H1Pool>>();

  constructor(private readonly opts: { connections?: number; headersTimeoutMs?: number; bodyTimeoutMs?: number; connectTimeoutMs?: number } = {}) {}

  /** The pools a route has used, by origin: the request path skips building the key. */
  private readonly byRoute = new WeakMap<object, Map<string, Pool>>();

  get(origin: string, route: Pick<Route, 'upstreamHttp2' | 'insecureSkipVerify' | 'trustedCAs'>): Pool {
    return remembered(this.byRoute, route, origin, undiciLive, () => this.lookup(origin, route));
  }

  /** The HTTP/1.1 pool for requests to `origin` (http: or https:). */
  h1(origin: string, route: TlsSettings): H1Pool {
    return remembered(this.h1ByRoute, route, origin, h1Live, () => {
      const key = `${origin}|${tlsKey(route)}`;
      let pool = this.h1Pools.get(key);
      if (!pool || pool.closed) {
        pool = new H1Pool(origin, {
          connections: this.opts.connections ?? 256,
          keepAliveTimeoutMs: 30_000,
          headersTimeoutMs: this.opts.headersTimeoutMs ?? 60_000,
          bodyTimeoutMs: this.opts.bodyTimeoutMs ?? 300_000,
          connectTimeoutMs: this.opts.connectTimeoutMs ?? 10_000,
          tls: tlsOptions(route),
        });
        this.h1Pools.set(key, pool);
      }
      return pool;
    });
  }

  private lookup(origin: string, route: Pick<Route, 'upstreamHttp2' | 'insecureSkipVerify' | 'trustedCAs'>): Pool {
    const key = `${origin}|${route.upstreamHttp2 ? 'h2' : 'h1'}|${tlsKey(route)}`;
    let pool = this.pools.get(key);
    if (!pool) {
      pool = new Pool(origin, {
        connections: this.opts.connections ?? 256,
        pipelining: 1,
        keepAliveTimeout: 30_000,
        headersTimeout: this.opts.headersTimeoutMs ?? 60_000,
        bodyTimeout: this.opts.bodyTimeoutMs ?? 300_000,
        connectTimeout: this.opts.connectTimeoutMs ?? 10_000,
        allowH2: route.upstreamHttp2,
        connect: tlsOptions(route),
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...[...this.pools.values()].map((p) => p.close().catch(() => p.destroy())), ...[...this.h1Pools.values()].map((p) => p.close())]);
    this.pools.clear();
    this.h1Pools.clear();
  }
}

const undiciLive = (p: Pool) => !p.closed && !p.destroyed;
const h1Live = (p: H1Pool) => !p.closed;

/** The pool a route used for `origin` last, while it is `live`; else `make`'s, remembered for the route. */
function remembered<P>(byRoute: WeakMap<object, Map<string, P>>, route: object, origin: string, live: (p: P) => boolean, make: () => P): P {
  let mine = byRoute.get(route);
  const known = mine?.get(origin);
  if (known !== undefined && live(known)) return known;
  const pool = make();
  if (!mine) byRoute.set(route, (mine = new Map()));
  mine.set(origin, pool);
  return pool;
}

/** How a route verifies an upstream's certificate. Trusted CAs add to the system's, they do not replace them. */
function tlsOptions(route: TlsSettings): { rejectUnauthorized: boolean; ca?: string[] } {
  return { rejectUnauthorized: !route.insecureSkipVerify, ...(route.trustedCAs.length ? { ca: [...rootCertificates, ...route.trustedCAs] } : {}) };
}

/** How a route verifies an upstream's certificate, as part of a pool's key. */
function tlsKey(route: TlsSettings): string {
  const cas = route.trustedCAs.length ? createHash('sha256').update(route.trustedCAs.join('\n')).digest('hex').slice(0, 16) : 'system';
  return `${route.insecureSkipVerify ? 'insecure' : 'verify'}|${cas}`;
}

/** Round robin over a route's endpoints, skipping for a while those that just failed. */
export class Balancer {
  private next = 0;
  private readonly failedUntil = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now) {}

  /** The endpoint to try, or undefined when there is none. If all are ejected, tries them anyway. */
  pick(endpoints: readonly Endpoint[]): Endpoint | undefined {
    if (endpoints.length === 0) return undefined;
    const t = this.now();
    for (let i = 0; i < endpoints.length; i++) {
      const ep = endpoints[(this.next + i) % endpoints.length]!;
      if ((this.failedUntil.get(ep.url.href) ?? 0) <= t) {
        this.next = (this.next + i + 1) % endpoints.length;
        return ep;
      }
    }
    const ep = endpoints[this.next % endpoints.length]!;
    this.next = (this.next + 1) % endpoints.length;
    return ep;
  }

  markFailed(ep: Endpoint): void {
    this.failedUntil.set(ep.url.href, this.now() + ejectMs);
  }

  markHealthy(ep: Endpoint): void {
    this.failedUntil.delete(ep.url.href);
  }
}

export { Agent };
