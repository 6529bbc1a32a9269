import { durationMs, splitNamespaced, type AnyResource, type Condition, type ServiceConfig, type ServiceSpec } from '@postern/apis';
import { compileCors, type Cors } from './cors.js';

export interface Endpoint {
  url: URL;
  /** `url.origin` and `url.pathname` without its trailing slash, worked out once (URL getters build a new string per call). */
  origin: string;
  basePath: string;
  /** Served by a connected client of this user (tunnels); not reachable until those exist. */
  user?: string;
}

/** One upstream configuration, ready for the request path. */
export interface Route {
  name: string;
  endpoints: Endpoint[];
  removePrefix?: string;
  addPrefix?: string;
  addRequestHeaders: { key: string; value: string; append: boolean }[];
  removeRequestHeaders: Set<string>;
  addResponseHeaders: { key: string; value: string; append: boolean }[];
  removeResponseHeaders: Set<string>;
  passAuthorization: boolean;
  auth: NonNullable<NonNullable<ServiceConfig['http']>['auth']> | undefined;
  /** Buffer the request body (policies, plugins, enableRequestBuffering, body.mode JSON). */
  buffer: boolean;
  maxRequestSize: number;
  upstreamHttp2: boolean;
  insecureSkipVerify: boolean;
  /** Extra CAs (PEM) trusted for this upstream, beside the system's. */
  trustedCAs: string[];
  /** Retries when the upstream cannot be reached or answers one of `statusCodes`. */
  retry: { maxRetries: number; initialMs: number; maxMs: number; statusCodes: Set<number> } | undefined;
  cors: Cors | undefined;
  plugins: NonNullable<NonNullable<ServiceConfig['http']>['plugins']>;
}

/** A Service compiled for the proxy: its routes and dynamic rules. */
export interface CompiledService {
  resource: AnyResource;
  /** `svc.ns` */
  fullName: string;
  name: string;
  namespace: string;
  spec: ServiceSpec;
  defaultRoute: Route | undefined;
  routes: Map<string, Route>;
  rules: { condition: Condition; configName: string }[];
  /** Whether any route has PRE_AUTH plugins (run before the decision). */
  preAuth: boolean;
  /** Whether any route buffers request bodies (`enableRequestBuffering`), and the largest body any route takes. */
  buffers: boolean;
  maxRequestSize: number;
}

export const defaultMaxRequestSize = 4 * 1024 * 1024;

function compileConfig(c: ServiceConfig, name: string): Route {
  const http = c.http ?? {};
  const up = c.upstream ?? {};
  const endpoint = (url: string, user?: string): Endpoint => {
    const u = new URL(url);
    return { url: u, origin: u.origin, basePath: u.pathname.replace(/\/$/, ''), ...(user ? { user } : {}) };
  };
  const endpoints: Endpoint[] = up.url
    ? [endpoint(up.url)]
    : up.loadbalance
      ? up.loadbalance.endpoints.map((e) => endpoint(e.url, e.user))
      : up.user
        ? [endpoint('http://connected-client.invalid', up.user)]
        : [];
  const lower = (xs: string[] | undefined) => new Set((xs ?? []).map((x) => x.toLowerCase()));
  const hv = (xs: { key: string; value: string; append?: boolean | undefined }[] | undefined) => (xs ?? []).map((h) => ({ key: h.key.toLowerCase(), value: h.value, append: h.append ?? false }));
  const plugins = http.plugins ?? [];
  return {
    name,
    endpoints,
    ...(http.path?.removePrefix ? { removePrefix: http.path.removePrefix } : {}),
    ...(http.path?.addPrefix ? { addPrefix: http.path.addPrefix } : {}),
    addRequestHeaders: hv(http.header?.addRequestHeaders),
    removeRequestHeaders: lower(http.header?.removeRequestHeaders),
    addResponseHeaders: hv(http.header?.addResponseHeaders),
    removeResponseHeaders: lower(http.header?.removeResponseHeaders),
    passAuthorization: http.header?.authorizationMode === 'PASS',
    auth: http.auth,
    buffer: !!http.enableRequestBuffering || http.body?.mode === 'JSON' || plugins.some((p) => p.lua || p.jsonSchema || p.extProc?.requestMode === 'BODY'),
    maxRequestSize: http.body?.maxRequestSize ?? defaultMaxRequestSize,
    upstreamHttp2: !!http.isUpstreamHTTP2,
    insecureSkipVerify: !!c.tls?.insecureSkipVerify,
    trustedCAs: c.tls?.trustedCAs ?? [],
    retry: http.retry
      ? {
          maxRetries: http.retry.maxRetries ?? 3,
          initialMs: durationMs(http.retry.initialInterval) ?? 100,
          maxMs: durationMs(http.retry.maxInterval) ?? 2000,
          statusCodes: new Set(http.retry.statusCodes ?? []),
        }
      : undefined,
    cors: http.cors ? compileCors(http.cors) : undefined,
    plugins,
  };
}

/**
 * Translates a Service resource into what the request path needs. Pure: plain data in, plain
 * data out; secrets are looked up per request, so a rotated Secret applies at once.
 */
export function compileService(resource: AnyResource): CompiledService {
  const spec = resource.spec as ServiceSpec;
  const { name, namespace } = splitNamespaced(resource.metadata.name);
  const routes = new Map<string, Route>();
  for (const c of spec.dynamicConfig?.configs ?? []) routes.set(c.name, compileConfig(c, c.name));
  const defaultRoute = spec.config?.upstream ? compileConfig(spec.config, spec.config.name ?? 'default') : undefined;
  const all = [defaultRoute, ...routes.values()].filter((r): r is Route => r !== undefined);
  return {
    resource,
    fullName: resource.metadata.name,
    name,
    namespace,
    spec,
    defaultRoute,
    routes,
    rules: spec.dynamicConfig?.rules ?? [],
    preAuth: all.some((r) => r.plugins.some((p) => p.phase === 'PRE_AUTH')),
    buffers: all.some((r) => r.buffer),
    maxRequestSize: Math.max(0, ...all.map((r) => r.maxRequestSize)),
  };
}

/** `/stable/x` with removePrefix `/stable` and addPrefix `/v1` → `/v1/x`. */
export function rewritePath(path: string, route: Route): string {
  let p = path;
  if (route.removePrefix && (p === route.removePrefix || p.startsWith(route.removePrefix.endsWith('/') ? route.removePrefix : `${route.removePrefix}/`))) {
    p = p.slice(route.removePrefix.length) || '/';
    if (!p.startsWith('/')) p = `/${p}`;
  }
  if (route.addPrefix) p = `${route.addPrefix.replace(/\/$/, '')}${p}`;
  return p;
}
