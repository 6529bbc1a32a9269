import { rootCertificates } from 'node:tls';
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

  /** The response headers of a stream; rejects on error, or after `timeoutMs` (code UND_ERR_HEADERS_TIMEOUT). */
  static response(stream: ClientHttp2Stream, timeoutMs: number): Promise<IncomingHttpHeaders> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stream.close(constants.NGHTTP2_CANCEL);
        reject(Object.assign(new Error('upstream response headers timed out'), { code: 'UND_ERR_HEADERS_TIMEOUT' }));
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

  close(): void {
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }
}
