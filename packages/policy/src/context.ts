/** What the proxy knows of an HTTP request, as input to `httpRequest`. */
export interface HttpRequestInput {
  method: string;
  /** The normalised path. */
  path: string;
  /** The raw query string, without `?`. */
  query: string;
  host: string;
  scheme: 'http' | 'https';
  /** Lower-case names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  /** Content length as declared or read; 0 when unknown. */
  size: number;
  /** The buffered body, when the Service buffers it; undefined when it streams. */
  body?: Buffer | undefined;
}

function lazy<T extends object>(target: T, name: string, compute: () => unknown): void {
  let done = false;
  let value: unknown;
  Object.defineProperty(target, name, {
    enumerable: true,
    get() {
      if (!done) {
        value = compute();
        done = true;
      }
      return value;
    },
  });
}

/**
 * `ctx.request.http` of REFERENCE.md. The query map, the body text and `bodyMap` are computed
 * only when a rule reads them; `bodyMap` is the parsed JSON object, and absent (so a rule on it
 * is false) when the body is not buffered or not a JSON object.
 */
export function httpRequest(input: HttpRequestInput): Record<string, unknown> {
  const http: Record<string, unknown> = {
    method: input.method,
    path: input.path,
    host: input.host,
    scheme: input.scheme,
    uri: input.query ? `${input.path}?${input.query}` : input.path,
    headers: input.headers,
    size: input.size,
  };
  lazy(http, 'queryParams', () => {
    const out: Record<string, string> = {};
    for (const [k, v] of new URLSearchParams(input.query)) out[k] = out[k] === undefined ? v : `${out[k]},${v}`;
    return out;
  });
  lazy(http, 'body', () => (input.body ? input.body.toString('utf8') : undefined));
  lazy(http, 'bodyMap', () => {
    if (!input.body || input.body.length === 0) return undefined;
    try {
      const parsed: unknown = JSON.parse(input.body.toString('utf8'));
      return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : undefined;
    } catch {
      return undefined;
    }
  });
  return http;
}
