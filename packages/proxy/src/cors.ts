import type { ProxyRequest, ProxyResponse } from './exchange.js';
import type { ServiceConfig } from '@postern/apis';
import { HttpError } from './http-error.js';

/** A route's CORS rules (`http.cors`), ready to answer preflights and decorate responses. */
export interface Cors {
  allowOrigin: (origin: string) => boolean;
  allowMethods: string | undefined;
  allowHeaders: string | undefined;
  exposeHeaders: string | undefined;
  maxAge: string | undefined;
  allowCredentials: boolean;
}

export function compileCors(c: NonNullable<NonNullable<ServiceConfig['http']>['cors']>): Cors {
  const matchers = (c.allowOriginStringMatch ?? []).map((m) => {
    if (m.exact !== undefined) return (o: string) => o === m.exact;
    if (m.prefix !== undefined) return (o: string) => o.startsWith(m.prefix!);
    if (m.regex !== undefined) {
      const re = new RegExp(`^(?:${m.regex})$`);
      return (o: string) => re.test(o);
    }
    return () => false;
  });
  return {
    allowOrigin: (o) => matchers.some((m) => m(o)),
    allowMethods: c.allowMethods,
    allowHeaders: c.allowHeaders,
    exposeHeaders: c.exposeHeaders,
    maxAge: c.maxAge,
    allowCredentials: !!c.allowCredentials,
  };
}

/** Origins longer than this are refused without matching (they are headers a browser sets). */
const maxOrigin = 2048;

function allowed(cors: Cors, origin: string): boolean {
  return origin.length <= maxOrigin && cors.allowOrigin(origin);
}

/** Answers a CORS preflight from `origin`: 204 with the allowed methods and headers, or 403. */
export function answerPreflight(req: ProxyRequest, res: ProxyResponse, cors: Cors, origin: string): void {
  if (!allowed(cors, origin)) throw new HttpError(403, 'this origin may not call the service', `CORS preflight from ${origin.slice(0, 200)}`);
  res.statusCode = 204;
  res.setHeader('access-control-allow-origin', origin);
  res.setHeader('vary', 'Origin');
  res.setHeader('access-control-allow-methods', cors.allowMethods ?? String(req.headers['access-control-request-method']));
  const asked = req.headers['access-control-request-headers'];
  const headers = cors.allowHeaders ?? asked;
  if (headers) res.setHeader('access-control-allow-headers', String(headers));
  if (cors.maxAge) res.setHeader('access-control-max-age', cors.maxAge);
  if (cors.allowCredentials) res.setHeader('access-control-allow-credentials', 'true');
  res.end();
}

/** The CORS headers of a proxied response to an allowed origin (none for other origins). */
export function corsResponseHeaders(cors: Cors, origin: string, headers: Map<string, string | string[]>): void {
  if (!allowed(cors, origin)) return;
  headers.set('access-control-allow-origin', origin);
  const vary = headers.get('vary');
  headers.set('vary', vary ? `${[vary].flat().join(', ')}, Origin` : 'Origin');
  if (cors.exposeHeaders) headers.set('access-control-expose-headers', cors.exposeHeaders);
  if (cors.allowCredentials) headers.set('access-control-allow-credentials', 'true');
}
