/**
 * One request to an upstream over undici's dispatch interface (its handler callbacks: the Pool of
 * undici 7 still requires them). undici's `request()` wraps every
 * response body in a Readable stream and its async iterator; at tens of thousands of requests a
 * second that machinery costs more than the rest of the proxy's work, so the body arrives here
 * in a small queue instead, with the same backpressure (the upstream socket pauses while the
 * queue is full) and the same error codes.
 */
import type { Dispatcher } from 'undici';

export interface UpstreamAnswer {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  /** Iterate once. Leaving the loop early aborts the upstream request (its connection is not reused). */
  body: AsyncIterable<Buffer>;
  /**
   * The whole body, if it has already arrived and nothing has been read (an empty body is
   * whole too); undefined otherwise, and then `body` is to be iterated.
   */
  whole?: () => Buffer | undefined;
  /** HTTP/2 trailers (gRPC), when the upstream speaks HTTP/2. */
  h2Trailers?: Promise<Record<string, string | string[] | undefined>>;
}

/** Bytes held before the upstream socket is paused. */
const highWaterMark = 64 * 1024;

class BodyQueue implements AsyncIterable<Buffer> {
  private chunks: Buffer[] = [];
  private size = 0;
  private done = false;
  private paused = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly resume: () => void,
    private readonly abort: (err: Error) => void,
  ) {}

  /** Returns false when the upstream socket should pause until the queue is read. */
  push(chunk: Buffer): boolean {
    this.chunks.push(chunk);
    this.size += chunk.length;
    this.wake?.();
    this.paused = this.size >= highWaterMark;
    return !this.paused;
  }

  end(): void {
    this.done = true;
    this.wake?.();
  }

  fail(err: Error): void {
    this.error = err;
    this.done = true;
    this.wake?.();
  }

  whole(): Buffer | undefined {
    if (!this.done || this.error) return undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
    this.chunks = [];
    this.size = 0;
    return all;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    let finished = false;
    try {
      for (;;) {
        if (this.chunks.length) {
          const chunk = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
          this.chunks = [];
          this.size = 0;
          if (this.paused) {
            this.paused = false;
            this.resume();
          }
          yield chunk;
          continue;
        }
        if (this.error) throw this.error;
        if (this.done) {
          finished = true;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      if (!finished && !this.done) this.abort(new Error('the response body was not read to its end'));
    }
  }
}

/** Sends one request; resolves at the response headers, rejects if none arrive. */
export function callUpstream(dispatcher: Dispatcher, opts: Dispatcher.DispatchOptions): Promise<UpstreamAnswer> {
  return new Promise((resolve, reject) => {
    let queue: BodyQueue | undefined;
    let abort: (err: Error) => void = () => {};
    dispatcher.dispatch(opts, {
      onConnect(abortRequest) {
        abort = abortRequest;
      },
      onHeaders(statusCode, rawHeaders, resume) {
        if (statusCode < 200) return true; // 1xx: informational, the final answer follows
        queue = new BodyQueue(resume, abort);
        const body = queue;
        resolve({ statusCode, headers: parseRawHeaders(rawHeaders), body, whole: () => body.whole() });
        return true;
      },
      onData(chunk) {
        return queue ? queue.push(chunk) : true;
      },
      onComplete() {
        queue?.end();
      },
      onError(err) {
        if (queue) queue.fail(err);
        else reject(err);
      },
    });
  });
}

/** Raw header pairs to lower-case names; a repeated header becomes an array, in order. */
function parseRawHeaders(raw: Buffer[] | string[] | null): UpstreamAnswer['headers'] {
  const out: UpstreamAnswer['headers'] = {};
  if (!raw) return out;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString().toLowerCase();
    const value = raw[i + 1]!.toString('latin1');
    const have = out[name];
    out[name] = have === undefined ? value : Array.isArray(have) ? [...have, value] : [have, value];
  }
  return out;
}
