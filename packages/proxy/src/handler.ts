import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { isPosternError, type AnyResource } from '@postern/apis';
import type { AccessTokenVerifier } from '@postern/authserver';
import { decide, describeDecision, evaluateCondition, gatherPolicies, httpRequest, preCheck, type Decision, type PolicySource } from '@postern/policy';
import type { ResourceCache } from '@postern/store';
import type { Logger } from 'pino';
import { AccessLog, type AccessLogEntry } from './access-log.js';
import { grpcCall, writable, type ProxyRequest, type ProxyResponse } from './exchange.js';
import { answer, PluginRunner, type PluginRequestState, type RateCounter } from './plugins.js';
import { HttpError, replyError, replyErrorOnSocket } from './http-error.js';
import { counted, drain, readLimited } from './bodies.js';
import { answerPreflight, corsResponseHeaders } from './cors.js';
import { connectionHeaders, flatHeaders, framingProblem, pluginCannotChange, twoHosts, upstreamHeaders } from './headers.js';
import { IdentityIndex, plainIp, tokenFromRequest, type Caller } from './identity.js';
import { normalizeTarget } from './normalize.js';
import { compileService, rewritePath, type CompiledService, type Endpoint, type Route } from './routes.js';
import { Balancer, UpstreamPools } from './upstream.js';
import { H2Upstreams } from './h2upstream.js';
import { UpstreamAuth, UpstreamAuthError } from './upstream-auth.js';
import type { UpstreamAnswer } from './upstream-call.js';

/**
 * A request's access-log entry, every field present from the start (unset ones undefined, which
 * the line leaves out): one object shape for every request keeps its serialisation on V8's fast
 * path. The order is the line's.
 */
function accessEntry(rid: string, req: ProxyRequest): AccessLogEntry {
  return { type: 'access', rid, method: req.method ?? '', path: req.url ?? '', status: 0, bytesIn: 0, bytesOut: 0, latencyMs: 0, service: undefined, user: undefined, session: undefined, decision: undefined, reason: undefined, config: undefined, upstream: undefined, retries: undefined, error: undefined };
}

/** Kinds the proxy reads from its cache. */
export const proxyCacheKinds = ['Service', 'Namespace', 'User', 'Group', 'Session', 'Device', 'Policy', 'ClusterConfig', 'Secret'] as const;

export interface ProxyCoreOptions {
  /** A started cache of at least `proxyCacheKinds`. */
  cache: ResourceCache;
  /** Access tokens to identities: the AuthServer, or a verifier over a replica cache (proxy workers). */
  auth: AccessTokenVerifier;
  domain: string;
  /** Access log and errors. */
  logger: Logger;
  now?: () => Date;
  pools?: UpstreamPools;
  /** How long to wait for an upstream's response headers before 504; default 60 s. */
  upstreamTimeoutMs?: number;
  /** Where rate-limit plugins count; default this process's memory. */
  rateCounter?: RateCounter;
}

/** Where a request came in: a Service's own listener (tunnel side) or the public HTTPS listener. */
export type Entry = { kind: 'service'; service: string } | { kind: 'public' };


/** Policies whose rules read the body: the request must then be buffered before deciding. */
const readsBody = new WeakMap<object, boolean>();
function needsBody(policies: readonly PolicySource[]): boolean {
  return policies.some((p) => {
    let v = readsBody.get(p.spec);
    if (v === undefined) {
      v = /request\.http\.body/.test(JSON.stringify(p.spec));
      readsBody.set(p.spec, v);
    }
    return v;
  });
}

/**
 * The request path of the identity-aware proxy: normalise → identify → authorize → route →
 * inject upstream credentials → stream. Reads only from memory (the watch-fed cache); the
 * database is never on the request path.
 */
export class ProxyCore {
  readonly identity: IdentityIndex;
  private readonly services = new Map<string, CompiledService>();
  private readonly balancers = new Map<string, Balancer>();
  private readonly balancerOf = new WeakMap<Route, Balancer>();
  private readonly pools: UpstreamPools;
  private readonly upstreamAuth: UpstreamAuth;
  private readonly now: () => Date;
  private readonly log: Logger;
  private readonly access: AccessLog;
  private readonly unsubscribe: () => void;
  private readonly plugins: PluginRunner;
  private readonly h2 = new H2Upstreams();
  private readonly upstreamTimeoutMs: number;
  /**
   * Gathered policies per Service and session. Everything they come from is in the cache, so
   * any change clears it; steady traffic then gathers once per caller and Service.
   */
  private policyMemo = new WeakMap<CompiledService, Map<string, PolicySource[]>>();

  constructor(private readonly opts: ProxyCoreOptions) {
    this.now = opts.now ?? (() => new Date());
    this.log = opts.logger;
    this.access = new AccessLog(opts.logger);
    this.pools = opts.pools ?? new UpstreamPools();
    this.upstreamTimeoutMs = opts.upstreamTimeoutMs ?? 60_000;
    this.plugins = new PluginRunner(this.now, opts.rateCounter);
    this.identity = new IdentityIndex(opts.cache, opts.auth);
    this.upstreamAuth = new UpstreamAuth((name) => {
      const data = (opts.cache.get('Secret', name)?.spec as { data?: { value?: string; valueBytes?: string } } | undefined)?.data;
      return data?.value ?? (data?.valueBytes ? Buffer.from(data.valueBytes, 'base64').toString('utf8') : undefined);
    });
    for (const s of opts.cache.list('Service')) this.services.set(s.metadata.name, compileService(s));
    this.unsubscribe = opts.cache.onChange((ev) => {
      this.policyMemo = new WeakMap();
      if (ev.type === 'RESYNC') {
        this.services.clear();
        for (const s of opts.cache.list('Service')) this.services.set(s.metadata.name, compileService(s));
        return;
      }
      if (ev.resource.kind !== 'Service') return;
      if (ev.type === 'DELETED') this.services.delete(ev.resource.metadata.name);
      else this.services.set(ev.resource.metadata.name, compileService(ev.resource));
    });
  }

  /** The compiled Service by `svc.ns`. */
  service(fullName: string): CompiledService | undefined {
    return this.services.get(fullName);
  }

  /** `inventory.example.com` → inventory.default; `accounts.finance.example.com` → accounts.finance (public Services only). */
  serviceForHost(hostHeader: string | undefined): CompiledService | undefined {
    if (!hostHeader) return undefined;
    // Host headers repeat: remember which Service name each one means (bounded).
    let full = this.hostNames.get(hostHeader);
    if (full === undefined) {
      const host = hostHeader.replace(/:\d+$/, '').toLowerCase().replace(/\.$/, '');
      const suffix = `.${this.opts.domain}`;
      const labels = host.endsWith(suffix) ? host.slice(0, -suffix.length).split('.') : [];
      full = labels.length === 1 ? `${labels[0]}.default` : labels.length === 2 ? `${labels[0]}.${labels[1]}` : '';
      if (this.hostNames.size >= 10_000) this.hostNames.clear();
      this.hostNames.set(hostHeader, full);
    }
    const svc = full ? this.services.get(full) : undefined;
    return svc?.spec.isPublic ? svc : undefined;
  }

  /** Host header → the `svc.ns` it names ('' for none), for serviceForHost. */
  private readonly hostNames = new Map<string, string>();

  /** The Device the caller's session runs on, if it names one. */
  private deviceOf(caller: Caller | undefined): AnyResource | undefined {
    const name = (caller?.session.status as { deviceRef?: { name?: string } } | undefined)?.deviceRef?.name;
    return name ? this.opts.cache.get('Device', name) : undefined;
  }

  private policiesFor(svc: CompiledService, caller: Caller | undefined): PolicySource[] {
    // Keyed by the Service, then the session's uid (no key string built per request); a session
    // made up for `explain` has none and is not kept.
    const uid = caller ? caller.session.metadata.uid : '';
    if (uid === undefined) return this.gather(svc, caller);
    let bySession = this.policyMemo.get(svc);
    if (!bySession || bySession.size >= 10_000) this.policyMemo.set(svc, (bySession = new Map()));
    let policies = bySession.get(uid);
    if (!policies) bySession.set(uid, (policies = this.gather(svc, caller)));
    return policies;
  }

  private gather(svc: CompiledService, caller: Caller | undefined): PolicySource[] {
    const cache = this.opts.cache;
    return gatherPolicies(
      {
        clusterConfig: cache.get('ClusterConfig', 'default'),
        namespace: cache.get('Namespace', svc.namespace),
        service: svc.resource,
        user: caller?.user,
        groups: caller?.groups ?? [],
        session: caller?.session,
        device: this.deviceOf(caller),
      },
      (name) => cache.get('Policy', name),
    ).policies;
  }

  /** The CEL `ctx` for a request. */
  context(svc: CompiledService, caller: Caller | undefined, http: Record<string, unknown>): Record<string, unknown> {
    // Built field by field: object spreads here showed in the request path's profile.
    const ctx: Record<string, unknown> = {};
    if (caller) {
      ctx.user = caller.user;
      ctx.groups = caller.groups;
      ctx.session = caller.session;
      const device = this.deviceOf(caller);
      if (device) ctx.device = device;
    }
    ctx.service = svc.resource;
    ctx.namespace = this.opts.cache.get('Namespace', svc.namespace);
    ctx.request = { http };
    return ctx;
  }

  /**
   * The decision for a request by `caller` to `svc`. Anonymous Services are allowed unless a
   * DENY rule matches; every other request needs an ALLOW (deny by default).
   */
  authorize(svc: CompiledService, caller: Caller | undefined, ctx: Record<string, unknown>, explain = false): Decision {
    const policies = this.policiesFor(svc, caller);
    if (svc.spec.isAnonymous) {
      const d = decide(policies, ctx, undefined, { explain });
      return d.effect === 'DENY' && d.reason.type === 'NO_POLICY_MATCH' ? { ...d, effect: 'ALLOW' } : d;
    }
    const check = caller ? preCheck({ session: caller.session, user: caller.user, now: this.now(), accessTokenExpiresAt: caller.accessTokenExpiresAt, service: svc.resource }) : 'NO_IDENTITY';
    return decide(policies, ctx, check, { explain });
  }

  /** The route a request takes: the first dynamicConfig rule that matches, else the default config. */
  route(svc: CompiledService, ctx: Record<string, unknown>): Route | undefined {
    for (const rule of svc.rules) {
      let matched = false;
      try {
        matched = evaluateCondition(rule.condition, { ctx, attrs: {} });
      } catch (err) {
        this.log.warn({ service: svc.fullName, config: rule.configName, err: (err as Error).message }, 'dynamicConfig rule failed; skipped');
      }
      if (matched) return svc.routes.get(rule.configName);
    }
    return svc.defaultRoute;
  }

  private identify(req: ProxyRequest, svc: CompiledService, entry: Entry): Caller | undefined {
    if (entry.kind === 'service') return this.identity.byAddress(plainIp(req.socket.remoteAddress));
    const token = tokenFromRequest(req.headers);
    if (!token) return undefined;
    try {
      return this.identity.byToken(token);
    } catch (err) {
      if (isPosternError(err)) throw new HttpError(401, 'your session is not valid; log in again', `${err.code}: ${err.message}`);
      throw err;
    }
  }

  private serviceOf(req: ProxyRequest, entry: Entry): CompiledService | undefined {
    return entry.kind === 'service' ? this.services.get(entry.service) : this.serviceForHost(req.headers.host ?? (req.headers[':authority'] as string | undefined));
  }

  /**
   * A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) for a Service whose
   * default config has `http.cors`: answered here, before identity — browsers send no
   * credentials on preflights — and never forwarded. Returns whether it answered.
   */
  private preflight(req: ProxyRequest, res: ProxyResponse, entry: Entry, log: AccessLogEntry): boolean {
    const origin = req.headers.origin;
    if (req.method !== 'OPTIONS' || !origin || !req.headers['access-control-request-method']) return false;
    const svc = this.serviceOf(req, entry);
    const cors = (svc?.defaultRoute ?? svc?.routes.values().next().value)?.cors;
    if (!svc || !cors) return false;
    log.service = svc.fullName;
    log.reason = { type: 'CORS_PREFLIGHT' };
    answerPreflight(req, res, cors, origin);
    log.decision = 'ALLOW';
    log.status = 204;
    return true;
  }

  /** Resolves the Service, the caller and the decision; throws HttpError for every refusal. */
  private async admit(req: ProxyRequest, entry: Entry, log: AccessLogEntry, readBody: boolean, res?: ProxyResponse) {
    // HTTP/2 frames carry their own lengths; Content-Length/Transfer-Encoding games are HTTP/1.1's.
    // (The proxy's own HTTP/1.1 listener refused these before the request got here.)
    const framing = req.httpVersionMajor === 2 || req.framingChecked ? undefined : framingProblem(req.rawHeaders);
    if (framing) throw new HttpError(400, 'ambiguous request framing', framing);
    const hosts = twoHosts(req);
    if (hosts) throw new HttpError(400, 'the request names two different hosts', hosts);
    const target = normalizeTarget(req.url ?? '');
    if (!target.ok) throw new HttpError(400, 'bad request path', target.reason);
    log.path = target.path;
    const svc = this.serviceOf(req, entry);
    if (!svc) throw new HttpError(404, 'no such service');
    log.service = svc.fullName;
    const caller = svc.spec.isAnonymous ? undefined : this.identify(req, svc, entry);
    if (!svc.spec.isAnonymous && !caller) throw new HttpError(401, 'authentication required', 'no identity');
    log.user = caller?.user.metadata.name;
    log.session = caller?.session.metadata.name;
    const policies = caller || svc.spec.isAnonymous ? this.policiesFor(svc, caller) : [];
    const declared = Number(req.headers['content-length'] ?? 0);
    let body = readBody && (svc.buffers || needsBody(policies)) ? await readLimited(req, svc.maxRequestSize) : undefined;
    const http = () =>
      httpRequest({
        method: req.method ?? 'GET',
        path: target.path,
        query: target.query,
        host: req.headers.host ?? '',
        scheme: entry.kind === 'public' ? 'https' : 'http',
        headers: flatHeaders(req.headers),
        size: body?.length ?? declared,
        body,
      });
    const ctx = this.context(svc, caller, http());
    const grpc = grpcCall(req.headers['content-type'], target.path);
    if (grpc) (ctx.request as Record<string, unknown>).grpc = grpc;
    // PRE_AUTH plugins run on the route the request would take, before the decision.
    let route: Route | undefined;
    let pluginState: PluginRequestState | undefined;
    if (svc.preAuth) {
      route = this.route(svc, ctx);
      const pre = route ? this.plugins.select(route, 'PRE_AUTH', ctx) : [];
      if (pre.length) {
        pluginState = { ctx, body, requestHeaders: { ...req.headers } as Record<string, string | string[]> };
        try {
          if (await this.plugins.runRequest(pre, pluginState, caller, res)) return { answered: true as const, pluginState };
        } catch (err) {
          this.plugins.finish(pluginState);
          throw err;
        }
        // What PRE_AUTH plugins changed is the request from here on: the policy decides on it
        // and the upstream receives it. Host, framing and identity headers stay the gateway's.
        for (const k of Object.keys(req.headers)) if (!(k in pluginState.requestHeaders) && !pluginCannotChange(k)) delete req.headers[k];
        for (const [k, v] of Object.entries(pluginState.requestHeaders)) if (!pluginCannotChange(k)) req.headers[k] = v;
        body = pluginState.body;
        (ctx.request as Record<string, unknown>).http = http();
      }
    }
    try {
      const decision = this.authorize(svc, caller, ctx);
      log.decision = decision.effect;
      log.reason = decision.reason;
      if (decision.effect !== 'ALLOW') {
        throw new HttpError(decision.reason.detail === 'NO_IDENTITY' ? 401 : 403, 'access denied by policy', describeDecision(decision));
      }
      route ??= this.route(svc, ctx);
      if (!route) throw new HttpError(404, 'no route of this service matches the request', 'no dynamicConfig rule matched and there is no default config');
    } catch (err) {
      this.plugins.finish(pluginState);
      throw err;
    }
    log.config = route.name;
    return { answered: false as const, svc, caller, route, body, target, ctx, pluginState };
  }

  /** Balancers live per Service and config name, so a Service update keeps their state. */
  private balancer(svc: CompiledService, route: Route): Balancer {
    let b = this.balancerOf.get(route);
    if (b) return b;
    const key = `${svc.fullName}|${route.name}`;
    b = this.balancers.get(key);
    if (!b) {
      b = new Balancer();
      this.balancers.set(key, b);
    }
    this.balancerOf.set(route, b);
    return b;
  }

  /** Handles one HTTP request end to end; never throws. */
  async handle(req: ProxyRequest, res: ProxyResponse, entry: Entry): Promise<void> {
    const started = performance.now();
    const rid = randomUUID();
    const log = accessEntry(rid, req);
    res.setHeader('x-postern-request-id', rid);
    let bytesIn = 0;
    let pluginState: PluginRequestState | undefined;
    try {
      if (this.preflight(req, res, entry, log)) return;
      const admitted = await this.admit(req, entry, log, true, res);
      pluginState = admitted.pluginState;
      if (admitted.answered) {
        log.status = res.statusCode;
        return;
      }
      const { svc, caller, route, target, ctx } = admitted;
      let body = admitted.body;
      let endpoint = this.balancer(svc, route).pick(route.endpoints);
      if (!endpoint) throw new HttpError(502, 'the service has no upstream', 'no endpoints');
      if (endpoint.user) throw new HttpError(502, 'the upstream is served by a connected client, which is not supported yet', `upstream.user ${endpoint.user}`);
      let base = endpoint.url;
      const path = rewritePath(target.path, route);
      // The normalised path is already safe to append; building a URL object per request is not needed.
      const pathOn = (e: Endpoint) => `${e.basePath}${path}${target.query ? `?${target.query}` : ''}`;
      let upstreamPath = pathOn(endpoint);
      log.upstream = endpoint.origin;
      const headers = upstreamHeaders(req, rid, caller, svc.spec.isAnonymous === true, route, base, entry.kind === 'public');
      const requestPlugins = route.plugins.length ? this.plugins.select(route, 'POST_AUTH', ctx) : route.plugins;
      if (requestPlugins.length) {
        // PRE_AUTH plugins' ext_proc streams stay open for the response side, after these.
        pluginState = { ctx, body, requestHeaders: headers, exchanges: pluginState?.exchanges };
        if (await this.plugins.runRequest(requestPlugins, pluginState, caller, res)) {
          log.status = res.statusCode;
          return;
        }
        body = pluginState.body;
      }
      if (body) {
        bytesIn = body.length;
        delete headers['transfer-encoding'];
        headers['content-length'] = String(body.length);
      }
      const authenticate = async () => {
        try {
          if (route.auth) Object.assign(headers, await this.upstreamAuth.headers(route, { method: req.method ?? 'GET', url: new URL(upstreamPath, base), headers: headers as Record<string, string>, body }));
        } catch (err) {
          if (err instanceof UpstreamAuthError) throw new HttpError(502, 'the gateway could not authenticate to the upstream', err.message);
          throw err;
        }
      };
      if (route.auth) await authenticate();
      const hasBody =
        body !== undefined ? body.length > 0
        : req.httpVersionMajor === 2 ? !(req as unknown as { stream?: { endAfterHeaders?: boolean } }).stream?.endAfterHeaders
        : req.headers['content-length'] !== undefined ? Number(req.headers['content-length']) > 0
        : req.headers['transfer-encoding'] !== undefined;
      const upstreamBody = body ?? (hasBody ? counted(req, (n) => (bytesIn += n)) : null);
      let up!: UpstreamAnswer;
      // Retries (`http.retry`) only when the body can be sent again: buffered, or none at all.
      const retries = route.retry && (body !== undefined || !hasBody) ? route.retry.maxRetries : 0;
      for (let attempt = 0; ; attempt++) {
        if (attempt > 0) {
          await new Promise((r) => setTimeout(r, Math.min(route.retry!.initialMs * 2 ** (attempt - 1), route.retry!.maxMs)));
          // Another endpoint if the route has one that is not resting after a failure.
          const next = this.balancer(svc, route).pick(route.endpoints);
          if (next && !next.user && next !== endpoint) {
            endpoint = next;
            base = next.url;
            upstreamPath = pathOn(next);
            headers.host = base.host;
            log.upstream = next.origin;
            if (route.auth) await authenticate();
          }
        }
        const last = attempt >= retries;
        try {
          up = route.upstreamHttp2
            ? await this.h2.forward(base, req.method ?? 'GET', upstreamPath, headers, upstreamBody, route, this.upstreamTimeoutMs)
            : await this.pools.h1(endpoint.origin, route).request({ method: req.method ?? 'GET', path: upstreamPath, headers, body: upstreamBody });
          this.balancer(svc, route).markHealthy(endpoint);
        } catch (err) {
          const code = (err as { code?: string }).code ?? '';
          // A timeout is not retried: the upstream may be working on the request.
          if (code === 'ERR_UPSTREAM_HEADERS_TIMEOUT' || code === 'ERR_UPSTREAM_CONNECT_TIMEOUT') throw new HttpError(504, 'the upstream did not answer in time', code);
          this.balancer(svc, route).markFailed(endpoint);
          if (!last) continue;
          throw new HttpError(502, 'the upstream could not be reached', `${code} ${(err as Error).message}${attempt ? ` (after ${attempt} retries)` : ''}`);
        }
        if (!last && route.retry!.statusCodes.has(up.statusCode)) {
          await drain(up.body);
          continue;
        }
        log.retries = attempt || undefined;
        break;
      }
      const drop = connectionHeaders(up.headers);
      const responseHeaders = new Map<string, string | string[]>();
      // A gRPC "trailers-only" answer puts grpc-status in the headers; we always send headers
      // first, so move the status to the trailers, where clients then look for it.
      const grpcStatus: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(up.headers)) {
        // The request ID is the gateway's: an upstream that echoes it (or sends its own) does not replace it.
        if (v === undefined || drop.has(k) || route.removeResponseHeaders.has(k) || k === 'x-postern-request-id') continue;
        if (up.h2Trailers && (k === 'grpc-status' || k === 'grpc-message' || k === 'grpc-status-details-bin')) grpcStatus[k] = v;
        else responseHeaders.set(k, v);
      }
      let status = up.statusCode;
      let read: Buffer | undefined;
      const luaPlugins = requestPlugins.length ? requestPlugins.filter((p) => p.lua) : requestPlugins;
      if (luaPlugins.length || pluginState?.exchanges) {
        const readUpstream = async () => (read = up.whole?.() ?? (await readLimited(up.body, route.maxRequestSize, () => new HttpError(502, 'the upstream response is too large for the gateway plugin that reads it', `over ${route.maxRequestSize} bytes`))));
        const changed = await this.plugins.runResponse(luaPlugins, { ctx, responseHeaders, status, body: readUpstream }, pluginState?.exchanges);
        if (changed.immediate) {
          if (!read) void drain(up.body);
          const a = changed.immediate;
          answer(res, a.status, a.headers, a.body, 'an external processor answered');
          log.status = a.status;
          return;
        }
        status = changed.status ?? status;
        if (changed.body) {
          read = changed.body;
          responseHeaders.delete('transfer-encoding');
          responseHeaders.set('content-length', String(read.length));
        }
      }
      const origin = req.headers.origin;
      if (route.cors && origin) corsResponseHeaders(route.cors, origin, responseHeaders);
      for (const h of route.addResponseHeaders) {
        const have = responseHeaders.get(h.key);
        responseHeaders.set(h.key, h.append && have !== undefined ? [...(Array.isArray(have) ? have : [have]), h.value] : h.value);
      }
      for (const [k, v] of responseHeaders) res.setHeader(k, v);
      res.writeHead(status);
      log.status = status;
      // A body that has already arrived whole (most small answers) goes out with the headers in
      // one write, without iterating.
      const whole = read ?? up.whole?.();
      if (whole) {
        log.bytesOut = whole.length;
        res.end(whole);
        return;
      }
      // A body of unknown length (server-sent events, long polls): send the headers now rather
      // than with the first chunk. Known-length bodies go out with the headers in one write.
      if (up.headers['content-length'] === undefined) res.flushHeaders();
      for await (const chunk of up.body) {
        log.bytesOut += (chunk as Buffer).length;
        if (!res.write(chunk)) await writable(res);
        if (res.destroyed) break;
      }
      // gRPC puts its status in trailers: pass them on (HTTP/2 clients only).
      if (up.h2Trailers) {
        const trailers = { ...grpcStatus, ...(await up.h2Trailers) };
        if (Object.keys(trailers).length) res.addTrailers(trailers as Record<string, string>);
      }
      res.end();
    } catch (err) {
      this.fail(res, err, log);
    } finally {
      this.plugins.finish(pluginState);
      log.bytesIn = bytesIn || (log.bytesIn ?? 0);
      log.latencyMs = Math.round((performance.now() - started) * 1000) / 1000;
      this.access.write(log);
    }
  }

  private fail(res: ProxyResponse, err: unknown, log: AccessLogEntry): void {
    const e = err instanceof HttpError ? err : new HttpError(502, 'the gateway failed to forward the request', (err as Error)?.message ?? String(err));
    log.status = e.status;
    log.error = e.internal ?? e.publicMessage;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    replyError(res, e, log.rid);
  }

  /** Handles a WebSocket (or other) upgrade: same admission as a request, then a byte pipe. */
  async upgrade(req: ProxyRequest, socket: Duplex, head: Buffer, entry: Entry): Promise<void> {
    const started = performance.now();
    const rid = randomUUID();
    const log = accessEntry(rid, req);
    socket.on('error', () => socket.destroy());
    try {
      const admitted = await this.admit(req, entry, log, false);
      // ext_proc sees an upgrade's request headers only: its response is a byte stream.
      this.plugins.finish(admitted.pluginState);
      if (admitted.answered) return;
      const { svc, caller, route, target, ctx } = admitted;
      const endpoint = this.balancer(svc, route).pick(route.endpoints);
      if (!endpoint || endpoint.user) throw new HttpError(502, 'the service has no reachable upstream');
      const base = endpoint.url;
      // Under the upstream URL's own path, as for every other request.
      const path = `${endpoint.basePath}${rewritePath(target.path, route)}`;
      const headers = upstreamHeaders(req, rid, caller, svc.spec.isAnonymous === true, route, base, entry.kind === 'public');
      // Plugins hold for upgrades too (a rate limit, a direct answer, header changes by Lua).
      const requestPlugins = route.plugins.length ? this.plugins.select(route, 'POST_AUTH', ctx) : route.plugins;
      if (requestPlugins.length) {
        const state: PluginRequestState = { ctx, body: undefined, requestHeaders: headers };
        try {
          await this.plugins.runRequest(requestPlugins, state, caller, undefined);
        } finally {
          this.plugins.finish(state);
        }
      }
      Object.assign(headers, await this.upstreamAuth.headers(route, { method: 'GET', url: new URL(path, base), headers: headers as Record<string, string> }));
      const protocol = typeof req.headers.upgrade === 'string' ? req.headers.upgrade : 'websocket';
      const up = await this.pools.get(endpoint.origin, route).upgrade({ path: `${path}${target.query ? `?${target.query}` : ''}`, method: 'GET', headers, protocol });
      log.status = 101;
      const lines = ['HTTP/1.1 101 Switching Protocols', 'connection: Upgrade', `upgrade: ${protocol}`, `x-postern-request-id: ${rid}`];
      for (const [k, v] of Object.entries(up.headers)) {
        if (v === undefined || k === 'connection' || k === 'upgrade') continue;
        for (const one of Array.isArray(v) ? v : [v]) lines.push(`${k}: ${one}`);
      }
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (head.length) up.socket.write(head);
      up.socket.on('error', () => socket.destroy());
      socket.pipe(up.socket);
      up.socket.pipe(socket);
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(502, 'the upgrade failed', (err as Error).message);
      log.status = e.status;
      log.error = e.internal ?? e.publicMessage;
      replyErrorOnSocket(socket, e, rid);
    } finally {
      log.latencyMs = Math.round((performance.now() - started) * 1000) / 1000;
      this.access.write(log);
    }
  }

  /** Logs a request the HTTP parser refused before it reached `handle`. */
  logMalformed(rid: string, error: string): void {
    this.access.write({ rid, method: '', path: '', status: 400, bytesIn: 0, bytesOut: 0, latencyMs: 0, error });
  }

  async close(): Promise<void> {
    this.unsubscribe();
    this.plugins.close();
    this.h2.close();
    this.identity.close();
    await this.pools.close();
  }
}
