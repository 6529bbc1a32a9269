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

/**
 * `ctx.request.http` of REFERENCE.md. The query map, the body text and `bodyMap` are computed
 * only when a rule reads them; `bodyMap` is the parsed JSON object, and absent (so a rule on it
 * is false) when the body is not buffered or not a JSON object. The lazy fields are getters of
 * an object literal: CEL needs plain objects, and literal getters keep the object's shape fast
 * (Object.defineProperty per request cost more than evaluating the policy).
 */
export function httpRequest(input: HttpRequestInput): Record<string, unknown> {
  // Most requests have neither a query nor a buffered body: nothing to defer, so a plain object.
  if (!input.query && !input.body) {
    return { method: input.method, path: input.path, host: input.host, scheme: input.scheme, uri: input.path, headers: input.headers, size: input.size, queryParams: {}, body: undefined, bodyMap: undefined };
  }
  let queryParams: Record<string, string> | undefined;
  let body: string | undefined;
  let bodyRead = false;
  let bodyMap: object | undefined;
  let bodyMapRead = false;
  return {
    method: input.method,
    path: input.path,
    host: input.host,
    scheme: input.scheme,
    uri: input.query ? `${input.path}?${input.query}` : input.path,
    headers: input.headers,
    size: input.size,
    get queryParams(): Record<string, string> {
      if (!queryParams) {
        queryParams = {};
        for (const [k, v] of new URLSearchParams(input.query)) queryParams[k] = queryParams[k] === undefined ? v : `${queryParams[k]},${v}`;
      }
      return queryParams;
    },
    get body(): string | undefined {
      if (!bodyRead) {
        bodyRead = true;
        body = input.body ? input.body.toString('utf8') : undefined;
      }
      return body;
    },
    get bodyMap(): object | undefined {
      if (!bodyMapRead) {
        bodyMapRead = true;
        bodyMap = parseBodyMap(input.body);
      }
      return bodyMap;
    },
  };
}

function parseBodyMap(body: Buffer | undefined): object | undefined {
  if (!body || body.length === 0) return undefined;
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? parsed : undefined;
  } catch {
    return undefined;
  }
}
