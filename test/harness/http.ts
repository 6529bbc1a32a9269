import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  json<T = Record<string, unknown>>(): T;
}

/**
 * One HTTP request from a test: to a Service listener from a chosen source address (the tunnel
 * address the proxy identifies), or to the public HTTPS listener with a Host and the cluster CA.
 */
export function send(opts: {
  port: number;
  path?: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** Source address (a loopback alias standing for the tunnel address). */
  from?: string;
  /** HTTPS to the public listener for this host name, trusting `ca`. */
  tls?: { host: string; ca: string };
}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const common = {
      host: '127.0.0.1',
      port: opts.port,
      path: opts.path ?? '/',
      method: opts.method ?? 'GET',
      headers: { ...(opts.tls ? { host: opts.tls.host } : {}), ...(opts.body !== undefined ? { 'content-length': String(Buffer.byteLength(opts.body)) } : {}), ...opts.headers },
      ...(opts.from ? { localAddress: opts.from } : {}),
      agent: false as const,
    };
    const req = opts.tls ? httpsRequest({ ...common, ca: opts.tls.ca, servername: opts.tls.host }) : httpRequest(common);
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: <T>() => JSON.parse(body) as T });
      });
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}
