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
  once(event: 'drain', listener: () => void): unknown;
}
