/** Request and response bodies on the proxy's path: streamed and counted, read with a limit, or drained. */
import type { ProxyRequest } from './exchange.js';
import { HttpError } from './http-error.js';

/** Reads and drops a response body, so its connection can be reused. */
export async function drain(body: AsyncIterable<Buffer>): Promise<void> {
  try {
    for await (const _ of body) {
      // dropped
    }
  } catch {
    // a body that fails to arrive is dropped all the same
  }
}

/** The request body as it streams to the upstream, counting bytes for the access log (no 'data' listener: that would drop chunks). */
export async function* counted(req: ProxyRequest, add: (n: number) => void): AsyncGenerator<Buffer> {
  for await (const chunk of req) {
    add((chunk as Buffer).length);
    yield chunk as Buffer;
  }
}

/**
 * Reads a body up to `limit` bytes; beyond it, 413 (checked against a request's Content-Length
 * first), or the error `tooLarge` makes (an upstream's response read for a plugin).
 */
export async function readLimited(from: ProxyRequest | AsyncIterable<Buffer>, limit: number, tooLarge = () => new HttpError(413, `the request body is larger than ${limit} bytes`)): Promise<Buffer> {
  const declared = 'headers' in from ? from.headers['content-length'] : undefined;
  if (declared !== undefined && Number(declared) > limit) throw tooLarge();
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of from) {
    size += (chunk as Buffer).length;
    if (size > limit) throw tooLarge();
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
