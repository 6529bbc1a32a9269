import type { IncomingHttpHeaders } from 'node:http';
import type { ProxyRequest } from './exchange.js';
import { plainIp, tokenFromRequest, type Caller } from './identity.js';
import type { Route } from './routes.js';

/** Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). */
const hopByHop = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings']);

/**
 * Headers no plugin may set or remove (an ext_proc mutation, a PRE_AUTH change written back to the
 * request): pseudo-headers and Host (the target policy checked), framing and other hop-by-hop
 * headers (the gateway sets them from the body it sends), and its `x-postern-*` identity headers.
 */
export function pluginCannotChange(name: string): boolean {
  return name.startsWith(':') || name === 'host' || name === 'content-length' || hopByHop.has(name) || name.startsWith('x-postern-');
}

/** Hop-by-hop headers plus any the Connection header names. */
export function connectionHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): ReadonlySet<string> {
  const c = headers.connection;
  // Most requests name nothing beyond keep-alive/close: share the constant set.
  if (c === undefined || c === 'keep-alive' || c === 'close') return hopByHop;
  const out = new Set(hopByHop);
  for (const v of Array.isArray(c) ? c : c ? [c] : []) for (const name of v.split(',')) if (name.trim()) out.add(name.trim().toLowerCase());
  return out;
}

/** Lower-case single-valued view (repeated headers joined by ", "), as policies see them. */
export function flatHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  // Usually every value is already one string: then the headers serve as they are.
  let flat = true;
  for (const k in headers) {
    if (typeof headers[k] !== 'string') {
      flat = false;
      break;
    }
  }
  if (flat) return headers as Record<string, string>;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

/**
 * Rejects what request smuggling needs and Node's parser lets through: several Content-Length
 * headers (even equal ones), Content-Length beside Transfer-Encoding, a Transfer-Encoding other
 * than chunked. Returns the reason, or undefined when the framing is unambiguous.
 */
export function framingProblem(rawHeaders: readonly string[]): string | undefined {
  let contentLength = 0;
  let transferEncoding: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    if (name === 'content-length') contentLength++;
    if (name === 'transfer-encoding') transferEncoding = transferEncoding === undefined ? rawHeaders[i + 1]! : `${transferEncoding},${rawHeaders[i + 1]!}`;
  }
  if (contentLength > 1) return 'more than one Content-Length';
  if (transferEncoding !== undefined && contentLength > 0) return 'both Content-Length and Transfer-Encoding';
  if (transferEncoding !== undefined && transferEncoding.trim().toLowerCase() !== 'chunked') return `unsupported Transfer-Encoding "${transferEncoding}"`;
  return undefined;
}

/**
 * Whether the request names two hosts: an absolute-form target (`GET http://host/…`, RFC 9112
 * §3.2.2) whose host is not the Host header, or an HTTP/2 Host header that is not `:authority`
 * (RFC 9113 §8.3.1). The proxy routes by one of them; a request that names two is refused
 * rather than routed by either. Returns the reason, or undefined.
 */
export function twoHosts(req: ProxyRequest): string | undefined {
  const { host } = req.headers;
  const authority = req.headers[':authority'];
  const named = typeof authority === 'string' ? authority.toLowerCase() : undefined;
  if (named !== undefined && host !== undefined && host.toLowerCase() !== named) return 'the Host header names another host than :authority';
  const url = req.url ?? '';
  if (url.charCodeAt(0) === 47) return undefined; // origin form, the usual case: '/'
  const absolute = /^https?:\/\/([^/?#]*)/i.exec(url);
  if (absolute && absolute[1]!.toLowerCase() !== (host?.toLowerCase() ?? named ?? '')) return 'the request target names another host than the Host header';
  return undefined;
}

/**
 * The headers sent upstream: the caller's, less hop-by-hop ones, the caller's `x-forwarded-*`,
 * `x-real-ip` and `x-postern-*` (never trusted), the `postern_auth` cookie and, unless
 * `authorizationMode: PASS`, the caller's Authorization (even then, not when it carried the
 * access token the caller was identified by); then `x-forwarded-*`, the request ID
 * the caller's answer and the access log carry (`x-postern-request-id`, so the upstream's own logs
 * can be matched with the gateway's), the caller's identity, and the route's own.
 */
export function upstreamHeaders(req: ProxyRequest, rid: string, caller: Caller | undefined, anonymous: boolean, route: Route, upstream: URL, isPublic: boolean): Record<string, string | string[]> {
  const drop = connectionHeaders(req.headers);
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (k === 'te' && v === 'trailers' && route.upstreamHttp2) {
      out.te = 'trailers'; // gRPC needs it, and HTTP/2 allows exactly this value
      continue;
    }
    if (v === undefined || k.startsWith(':') || drop.has(k) || k === 'host' || k.startsWith('x-forwarded-') || k === 'forwarded' || k === 'x-real-ip' || k.startsWith('x-postern-')) continue;
    if (k === 'authorization' && !anonymous) {
      if (!route.passAuthorization) continue;
      // PASS is for the upstream's own credentials: the gateway's access token, when the caller
      // was identified by it, never leaves the gateway (an upstream could replay it to others).
      if (caller?.via === 'token' && typeof v === 'string' && tokenFromRequest(req.headers) === tokenFromRequest({ authorization: v })) continue;
    }
    if (k === 'cookie' && typeof v === 'string' && v.includes('postern_auth=')) {
      const rest = v.split(';').map((c) => c.trim()).filter((c) => !c.startsWith('postern_auth='));
      if (rest.length) out.cookie = rest.join('; ');
      continue;
    }
    if (route.removeRequestHeaders.has(k)) continue;
    out[k] = v;
  }
  out.host = upstream.host;
  const peer = plainIp(req.socket.remoteAddress);
  out['x-forwarded-for'] = peer;
  // nginx's name for the same (`proxy_set_header X-Real-IP $remote_addr`), which many apps read.
  out['x-real-ip'] = peer;
  out['x-forwarded-proto'] = isPublic ? 'https' : 'http';
  const host = req.headers.host ?? (req.headers[':authority'] as string | undefined);
  if (host) out['x-forwarded-host'] = host;
  out['x-postern-request-id'] = rid;
  if (caller) {
    out['x-postern-user'] = caller.user.metadata.name;
    if (caller.user.metadata.uid) out['x-postern-user-uid'] = caller.user.metadata.uid;
    const email = (caller.user.spec as { email?: string }).email;
    if (email) out['x-postern-user-email'] = email;
    out['x-postern-groups'] = caller.groupNames ?? caller.groups.map((g) => g.metadata.name).join(',');
    out['x-postern-session'] = caller.session.metadata.name;
  }
  for (const h of route.addRequestHeaders) {
    const have = out[h.key];
    out[h.key] = h.append && have !== undefined ? [...(Array.isArray(have) ? have : [have]), h.value] : h.value;
  }
  return out;
}
