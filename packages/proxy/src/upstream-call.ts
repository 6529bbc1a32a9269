/** What an upstream answered, as the proxy's handler reads it (HTTP/1.1 and HTTP/2 alike). */

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

/**
 * A response body as it arrives: a small queue rather than a Readable stream (whose machinery,
 * at tens of thousands of requests a second, costs more than the rest of the proxy's work), with
 * the same backpressure — `push` says when the upstream socket should pause until it is read.
 */
export class BodyQueue implements AsyncIterable<Buffer> {
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
    if (this.done) return;
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
