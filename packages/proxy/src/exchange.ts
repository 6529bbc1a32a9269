/**
 * What the proxy's handler needs of a request and a response. Node's IncomingMessage and
 * ServerResponse (the HTTP/2 and TLS listeners) and the proxy's own HTTP/1.1 listener (`h1/`)
 * both fit.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

export interface ProxyRequest extends AsyncIterable<unknown> {
  readonly method?: string | undefined;
  readonly url?: string | undefined;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: string[];
  readonly httpVersionMajor: number;
  readonly socket: { readonly remoteAddress?: string | undefined };
  /** Set when the listener already refused ambiguous framing (several Content-Lengths, CL with TE…). */
  readonly framingChecked?: boolean;
}

export interface ProxyResponse {
  statusCode: number;
  readonly headersSent: boolean;
  readonly destroyed: boolean;
  setHeader(name: string, value: number | string | readonly string[]): unknown;
  writeHead(status: number, headers?: OutgoingHttpHeaders): unknown;
  flushHeaders(): void;
  write(chunk: Buffer): boolean;
  end(chunk?: string | Buffer): unknown;
  addTrailers(trailers: OutgoingHttpHeaders): void;
  destroy(): unknown;
  once(event: 'drain' | 'close', listener: () => void): unknown;
  off(event: 'drain' | 'close', listener: () => void): unknown;
}

/** `ctx.request.grpc` for a gRPC call: `/pkg.Service/Method` → `{service: "pkg.Service", method: "Method"}`. */
export function grpcCall(contentType: string | string[] | undefined, path: string): { service: string; method: string } | undefined {
  if (typeof contentType !== 'string' || !contentType.startsWith('application/grpc')) return undefined;
  const m = path.match(/^\/([^/]+)\/([^/]+)$/);
  return m ? { service: m[1]!, method: m[2]! } : undefined;
}

/**
 * Resolves when `res` (an answer to the client, or a socket to the upstream) can take more, or
 * has closed (a peer gone mid-body must not leave us waiting).
 */
export function writable(res: Pick<ProxyResponse, 'destroyed' | 'once' | 'off'>): Promise<void> {
  if (res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
