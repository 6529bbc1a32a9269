import { createHash } from 'node:crypto';
import { rootCertificates } from 'node:tls';
import { Agent, Pool } from 'undici';
import type { Endpoint, Route } from './routes.js';

/** How long an endpoint that failed is skipped (passive health). */
export const ejectMs = 10_000;

/**
 * Keep-alive connection pools to upstream origins (undici), shared by every Service that points
 * at the same origin with the same TLS and protocol settings.
 */
export class UpstreamPools {
  private readonly pools = new Map<string, Pool>();

  constructor(private readonly opts: { connections?: number; headersTimeoutMs?: number; bodyTimeoutMs?: number; connectTimeoutMs?: number } = {}) {}

  /** The pools a route has used, by origin: the request path skips building the key. */
  private readonly byRoute = new WeakMap<object, Map<string, Pool>>();

  get(origin: string, route: Pick<Route, 'upstreamHttp2' | 'insecureSkipVerify' | 'trustedCAs'>): Pool {
    let mine = this.byRoute.get(route);
    const known = mine?.get(origin);
    if (known && !known.closed && !known.destroyed) return known;
    const pool = this.lookup(origin, route);
    if (!mine) this.byRoute.set(route, (mine = new Map()));
    mine.set(origin, pool);
    return pool;
  }

  private lookup(origin: string, route: Pick<Route, 'upstreamHttp2' | 'insecureSkipVerify' | 'trustedCAs'>): Pool {
    const cas = route.trustedCAs.length ? createHash('sha256').update(route.trustedCAs.join('\n')).digest('hex').slice(0, 16) : 'system';
    const key = `${origin}|${route.upstreamHttp2 ? 'h2' : 'h1'}|${route.insecureSkipVerify ? 'insecure' : 'verify'}|${cas}`;
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
        // Trusted CAs add to the system's, they do not replace them.
        connect: { rejectUnauthorized: !route.insecureSkipVerify, ...(route.trustedCAs.length ? { ca: [...rootCertificates, ...route.trustedCAs] } : {}) },
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.close().catch(() => p.destroy())));
    this.pools.clear();
  }
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
