import { rootCertificates } from 'node:tls';
import type { Route } from './routes.js';
import type { UpstreamAnswer } from './upstream-call.js';
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';

/**
 * HTTP/2 connections to upstreams that speak it (`isUpstreamHTTP2`: gRPC servers, usually h2c).
 * One session per origin, multiplexing every request; replaced when it closes or errs.
 */
export class H2Upstreams {
  private readonly sessions = new Map<string, ClientHttp2Session>();

  constructor(private readonly opts: { insecureSkipVerify?: boolean; connectTimeoutMs?: number } = {}) {}

  private session(origin: string, insecureSkipVerify: boolean, trustedCAs: readonly string[]): ClientHttp2Session {
    const key = `${origin}|${insecureSkipVerify}|${trustedCAs.join('\n')}`;
    const have = this.sessions.get(key);
    if (have && !have.closed && !have.destroyed) return have;
    const s = connect(origin.replace(/^grpc:/, 'http:').replace(/^grpcs:/, 'https:'), { rejectUnauthorized: !insecureSkipVerify, ...(trustedCAs.length ? { ca: [...rootCertificates, ...trustedCAs] } : {}) });
    const forget = () => {
      if (this.sessions.get(key) === s) this.sessions.delete(key);
    };
    s.on('close', forget);
    s.on('error', forget);
    s.on('goaway', forget);
    s.setTimeout(300_000, () => s.close());
    this.sessions.set(key, s);
    return s;
  }

  /** Opens a request stream at once (so the body can be sent before any answer). */
  open(origin: string, headers: OutgoingHttpHeaders, insecureSkipVerify: boolean, trustedCAs: readonly string[] = []): ClientHttp2Stream {
    return this.session(origin, insecureSkipVerify, trustedCAs).request(headers);
  }

  /** The response headers of a stream; rejects on error, or after `timeoutMs` (code ERR_UPSTREAM_HEADERS_TIMEOUT). */
  static response(stream: ClientHttp2Stream, timeoutMs: number): Promise<IncomingHttpHeaders> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stream.close(constants.NGHTTP2_CANCEL);
        reject(Object.assign(new Error('upstream response headers timed out'), { code: 'ERR_UPSTREAM_HEADERS_TIMEOUT' }));
      }, timeoutMs);
      stream.once('response', (h) => {
        clearTimeout(timer);
        resolve(h);
      });
      stream.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  /** Forwards over HTTP/2 (gRPC upstreams); same shape as an undici response, plus trailers. */
  async forward(base: URL, method: string, path: string, headers: Record<string, string | string[]>, body: Buffer | AsyncIterable<Buffer> | null, route: Pick<Route, 'insecureSkipVerify' | 'trustedCAs'>, timeoutMs: number): Promise<UpstreamAnswer> {
    const h2headers: Record<string, string | string[]> = { ':method': method, ':path': path, ':scheme': base.protocol.startsWith('https') || base.protocol.startsWith('grpcs') ? 'https' : 'http', ':authority': base.host };
    for (const [k, v] of Object.entries(headers)) if (k !== 'host' && k !== 'transfer-encoding') h2headers[k] = v;
    const stream = this.open(`${base.protocol}//${base.host}`, h2headers, route.insecureSkipVerify, route.trustedCAs);
    const response = H2Upstreams.response(stream, timeoutMs);
    // Send the body now: gRPC servers answer only after reading it.
    void (async () => {
      try {
        if (body instanceof Buffer) stream.end(body);
        else if (body) {
          for await (const chunk of body) if (!stream.write(chunk)) await new Promise((r) => stream.once('drain', r));
          stream.end();
        } else stream.end();
      } catch {
        stream.close();
      }
    })();
    const rh = await response;
    const trailers = new Promise<Record<string, string | string[] | undefined>>((resolve) => {
      stream.once('trailers', (t) => resolve(t as Record<string, string | string[] | undefined>));
      stream.once('close', () => resolve({}));
    });
    const out: Record<string, string | string[] | undefined> = {};
    for (const [k, v] of Object.entries(rh)) if (!k.startsWith(':')) out[k] = v as string | string[];
    return { statusCode: Number(rh[':status'] ?? 502), headers: out, body: stream as AsyncIterable<Buffer>, h2Trailers: trailers };
  }

  close(): void {
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }
}
