import type { IncomingHttpHeaders } from 'node:http';

/** Headers that describe one connection, never forwarded (RFC 9110 §7.6.1). */
const hopByHop = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings']);

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
