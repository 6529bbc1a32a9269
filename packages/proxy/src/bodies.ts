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

/** Reads a body up to `limit` bytes; beyond it, 413 (checked against Content-Length first). */
export async function readLimited(req: ProxyRequest, limit: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) throw new HttpError(413, `the request body is larger than ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, `the request body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

