import type { Duplex } from 'node:stream';
import type { ProxyResponse } from './exchange.js';

/** An answer the proxy gives itself: the status, a message safe to show, and the cause for the log. */
export class HttpError extends Error {
  constructor(readonly status: number, readonly publicMessage: string, readonly internal?: string, readonly headers: Record<string, string | string[]> = {}) {
    super(internal ?? publicMessage);
  }
}

export const statusText: Record<number, string> = { 429: 'Too Many Requests', 500: 'Internal Server Error', 501: 'Not Implemented', 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 413: 'Content Too Large', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };

/** The text of an error answer: the status, the message safe to show, and the request ID to quote. */
function errorText(e: HttpError, rid: string): string {
  return `${e.status} ${statusText[e.status] ?? ''}: ${e.publicMessage}\nrequest id: ${rid}\n`;
}

/** Answers with an error on a response not yet started. */
export function replyError(res: ProxyResponse, e: HttpError, rid: string): void {
  const body = errorText(e, rid);
  res.statusCode = e.status;
  res.setHeader('content-type', 'text/plain; charset=utf-8');
  res.setHeader('content-length', Buffer.byteLength(body));
  res.setHeader('cache-control', 'no-store');
  if (e.status === 401) res.setHeader('www-authenticate', 'Bearer realm="postern"');
  for (const [k, v] of Object.entries(e.headers)) res.setHeader(k, v);
  if (e.status === 400 || e.status === 413) res.setHeader('connection', 'close');
  res.end(body);
}

/** Answers with an error on the raw socket of an upgrade that failed, and closes it. */
export function replyErrorOnSocket(socket: Duplex, e: HttpError, rid: string): void {
  const body = errorText(e, rid);
  // Plugin headers (retry-after, a direct answer's own) go out too; CR/LF cannot reach them (the
  // schema, the HTTP parser and the ext_proc client refuse it).
  const extra = Object.entries(e.headers).flatMap(([k, v]) => (Array.isArray(v) ? v : [v]).map((one) => `${k}: ${one}\r\n`)).join('');
  socket.end(`HTTP/1.1 ${e.status} ${statusText[e.status] ?? 'Error'}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-postern-request-id: ${rid}\r\n${extra}connection: close\r\n\r\n${body}`);
}
