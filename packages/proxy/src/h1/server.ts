/**
 * The proxy's HTTP/1.1 listener: connections parsed by `parse.ts`, one request at a time per
 * connection (pipelined requests wait their turn), bodies streamed with backpressure both ways.
 *
 * Why not `node:http`: on the proxy's path Node's server objects (IncomingMessage,
 * ServerResponse and their streams) cost more than everything the proxy itself does per
 * request — measured, a bare `node:http` forwarder moves ~21,000 req/s on one core where the
 * same forwarder on this listener moves ~37,000. Requests and responses here have the shape
 * the proxy uses of Node's (`ProxyRequest`, `ProxyResponse`), so the HTTP/2 and TLS listeners,
 * which stay on Node's servers, share the same handler.
 */
import { EventEmitter } from 'node:events';
import { STATUS_CODES, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { atEndOfTurn } from './end-of-turn.js';
import { ChunkedDecoder, ParseError, badValue, fieldKey, headEnd, namesClose, parseHead, type RequestHead } from './parse.js';

export interface H1Limits {
  /** Largest request head; beyond it, 431. */
  maxHeaderSize: number;
  /** From a request's first byte to its whole head; beyond it, 408. */
  headersTimeoutMs: number;
  /** From a request's first byte to the end of its body; beyond it, 408. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
}

export const defaultLimits: H1Limits = { maxHeaderSize: 32 * 1024, headersTimeoutMs: 20_000, requestTimeoutMs: 300_000, keepAliveTimeoutMs: 65_000 };

export interface H1Handlers {
  request(req: H1Request, res: H1Response): void;
  /** A request with `Connection: upgrade`: the socket is the handler's from here on. */
  upgrade(req: H1Request, socket: Socket, head: Buffer): void;
  /** A request that could not be parsed: returns the request ID to answer with (and logs it). */
  malformed(reason: string): string;
}

/** Bytes of request body held before the client socket is paused. */
const bodyHighWater = 64 * 1024;
/** Pipelined bytes held while an earlier request is answered. */
const pipelineHighWater = 64 * 1024;

/** A request as the proxy reads it: Node's IncomingMessage shape, the body as an async iterable. */
export class H1Request implements AsyncIterable<Buffer> {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
  readonly rawHeaders: string[];
  readonly httpVersionMajor = 1;
  readonly framingChecked = true;
  readonly httpVersionMinor: number;
  /** Set once the whole body has arrived (true at once when there is none). */
  complete: boolean;
  private chunks: Buffer[] = [];
  private queued = 0;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  private iterated = false;

  constructor(
    head: RequestHead,
    readonly socket: Socket,
    private readonly conn: Connection,
  ) {
    this.method = head.method;
    this.url = head.url;
    this.headers = head.headers;
    this.rawHeaders = head.rawHeaders;
    this.httpVersionMinor = head.minor;
    this.complete = head.body.kind === 'none';
  }

  /** From the connection: body bytes, the end of the body, or a failure. */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.queued += chunk.length;
    if (this.queued >= bodyHighWater) this.conn.pauseBody();
    this.wake?.();
  }

  finish(): void {
    this.complete = true;
    this.wake?.();
  }

  fail(err: Error): void {
    this.error ??= err;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    if (this.iterated) throw new Error('the request body can be read once');
    this.iterated = true;
    this.conn.bodyWanted();
    for (;;) {
      if (this.chunks.length) {
        const chunk = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.queued);
        this.chunks = [];
        this.queued = 0;
        this.conn.resumeBody();
        yield chunk;
        continue;
      }
      if (this.error) throw this.error;
      if (this.complete) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
  }
}

function checkHeader(name: string, value: string): void {
  // As Node's setHeader: a header that would split the response is a programming error.
  if (fieldKey(name) === undefined) throw new TypeError(`invalid response header name ${JSON.stringify(name)}`);
  if (badValue.test(value)) throw new TypeError(`invalid character in response header ${name}`);
}

let dateCache = '';
let dateSecond = 0;
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateCache = new Date(now).toUTCString();
  }
  return dateCache;
}

/** A response as the proxy writes it: the part of Node's ServerResponse it uses. */
export class H1Response extends EventEmitter {
  statusCode = 200;
  headersSent = false;
  finished = false;
  private readonly fields = new Map<string, [string, string | string[]]>();
  private chunked = false;
  private noBody: boolean;
  private trailers: OutgoingHttpHeaders | undefined;
  private closeAfter: boolean;
  private ending = false;

  /** No request after this one on the connection (the server is draining). */
  closeAfterThis(): void {
    this.closeAfter = true;
  }

  constructor(
    private readonly req: H1Request,
    private readonly conn: Connection,
    keepAlive: boolean,
  ) {
    super();
    this.noBody = req.method === 'HEAD';
    this.closeAfter = !keepAlive;
  }

  get destroyed(): boolean {
    return this.conn.socket.destroyed;
  }

  get writableEnded(): boolean {
    return this.finished;
  }

  setHeader(name: string, value: number | string | readonly string[]): this {
    if (this.headersSent) throw new Error('headers already sent');
    const v = typeof value === 'number' ? String(value) : typeof value === 'string' ? value : [...value];
    for (const one of Array.isArray(v) ? v : [v]) checkHeader(name, one);
    this.fields.set(name.toLowerCase(), [name, v]);
    return this;
  }

  getHeader(name: string): string | string[] | undefined {
    return this.fields.get(name.toLowerCase())?.[1];
  }

  removeHeader(name: string): void {
    this.fields.delete(name.toLowerCase());
  }

  writeHead(status: number, headers?: OutgoingHttpHeaders | Record<string, string | string[]>): this {
    if (this.headersSent) throw new Error('headers already sent');
    this.statusCode = status;
    if (headers) for (const [k, v] of Object.entries(headers)) if (v !== undefined) this.setHeader(k, v as string | string[]);
    return this;
  }

  addTrailers(trailers: OutgoingHttpHeaders): void {
    this.trailers = trailers;
  }

  /** The status line and headers, with framing chosen for what follows. */
  private bodyless(): boolean {
    const status = this.statusCode;
    return this.noBody || status === 204 || status === 304 || (status >= 100 && status < 200);
  }

  private head(): string {
    this.noBody = this.bodyless();
    const status = this.statusCode;
    let out = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
    const length = this.fields.get('content-length');
    const connection = this.fields.get('connection');
    if (connection && namesClose.test(String(connection[1]))) this.closeAfter = true;
    // An unread request body cannot be skipped safely: answer, then close.
    if (!this.req.complete) this.closeAfter = true;
    for (const [key, [name, value]] of this.fields) {
      if (key === 'connection' || key === 'keep-alive' || key === 'transfer-encoding') continue;
      if (Array.isArray(value)) for (const v of value) out += `${name}: ${v}\r\n`;
      else out += `${name}: ${value}\r\n`;
    }
    if (!this.noBody && length === undefined) {
      if (this.req.httpVersionMinor === 1) {
        this.chunked = true;
        out += 'transfer-encoding: chunked\r\n';
      } else this.closeAfter = true; // HTTP/1.0: the body ends when the connection does
    }
    if (!this.fields.has('date')) out += `date: ${httpDate()}\r\n`;
    if (this.closeAfter) out += 'connection: close\r\n';
    else if (this.req.httpVersionMinor === 0) out += 'connection: keep-alive\r\n';
    return `${out}\r\n`;
  }

  flushHeaders(): void {
    if (this.headersSent) return;
    this.headersSent = true;
    this.conn.write(Buffer.from(this.head(), 'latin1'), this.ending);
  }

  write(chunk: Buffer | string): boolean {
    const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    let head: string | undefined;
    if (!this.headersSent) {
      this.headersSent = true;
      head = this.head();
    }
    if (this.noBody || data.length === 0) return head !== undefined ? this.conn.write(Buffer.from(head, 'latin1'), this.ending) : true;
    // One buffer per write (one syscall): head, chunk framing and data copied once.
    const prefix = this.chunked ? `${head ?? ''}${data.length.toString(16)}\r\n` : head ?? '';
    const suffix = this.chunked ? 2 : 0;
    if (!prefix && !suffix) return this.conn.write(data, this.ending);
    const out = Buffer.allocUnsafe(prefix.length + data.length + suffix);
    out.write(prefix, 0, 'latin1');
    data.copy(out, prefix.length);
    if (suffix) out.write('\r\n', prefix.length + data.length, 'latin1');
    return this.conn.write(out, this.ending);
  }

  end(chunk?: Buffer | string): this {
    if (this.finished) return this;
    // What end() writes goes out at the end of this turn of the event loop (see Connection.write).
    this.ending = true;
    if (!this.headersSent) this.noBody = this.bodyless();
    const status = this.statusCode;
    if (chunk !== undefined && !this.headersSent && !this.fields.has('content-length') && status !== 204 && status !== 304 && status >= 200) {
      // A body given whole: its length is known, so no chunked framing (and HEAD learns it too).
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      this.fields.set('content-length', ['content-length', String(bytes.length)]);
      chunk = bytes;
    } else if (chunk === undefined && !this.headersSent && !this.fields.has('content-length') && !this.noBody) {
      this.fields.set('content-length', ['content-length', '0']);
    }
    if (chunk !== undefined) this.write(chunk);
    else if (!this.headersSent) this.flushHeaders();
    if (this.chunked) {
      let last = '0\r\n';
      for (const [k, v] of Object.entries(this.trailers ?? {})) {
        if (v === undefined) continue;
        for (const one of Array.isArray(v) ? v : [String(v)]) {
          checkHeader(k, one);
          last += `${k}: ${one}\r\n`;
        }
      }
      this.conn.write(Buffer.from(`${last}\r\n`, 'latin1'), true);
    }
    this.finished = true;
    this.conn.responseDone(this.closeAfter);
    this.emit('finish');
    return this;
  }

  destroy(): void {
    this.conn.socket.destroy();
  }
}

type Phase = 'idle' | 'head' | 'body' | 'answering';

/** One client connection. */
class Connection {
  private buf: Buffer | undefined;
  private phase: Phase = 'idle';
  private req: H1Request | undefined;
  private res: H1Response | undefined;
  private bodyLeft = 0;
  private decoder: ChunkedDecoder | undefined;
  private wantsContinue = false;
  private bodyPaused = false;
  private clientEnded = false;
  /** The server is stopping (`drain`): no request after the one in progress. */
  private draining = false;
  /** When the current phase times out (ms since epoch), 0 for never. */
  deadline = 0;

  constructor(
    readonly socket: Socket,
    private readonly handlers: H1Handlers,
    private readonly limits: H1Limits,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('end', () => this.onEnd());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.req?.fail(new Error('the client closed the connection'));
      this.res?.emit('close');
    });
    socket.on('drain', () => this.res?.emit('drain'));
    this.deadline = Date.now() + limits.keepAliveTimeoutMs;
  }

  private onData(d: Buffer): void {
    if (this.phase === 'body') {
      const used = this.feedBody(d);
      if (used < 0) return;
      if (used < d.length) this.hold(d.subarray(used));
      return;
    }
    this.hold(d);
    if (this.phase === 'idle' || this.phase === 'head') this.parseNext();
    else if (this.buf && this.buf.length > pipelineHighWater) this.socket.pause(); // answering: wait our turn
  }

  private hold(d: Buffer): void {
    this.buf = this.buf ? Buffer.concat([this.buf, d]) : d;
  }

  private onEnd(): void {
    this.clientEnded = true;
    // Half-closed by the client: answer what is in progress, then close.
    if (this.phase === 'idle' && !this.buf?.length) {
      this.flush();
      this.socket.end();
    }
    else if (this.phase === 'body') this.req?.fail(new Error('the client ended the connection mid-body'));
  }

  /** Parses the next request from what is buffered, if a whole head is there. */
  private parseNext(): void {
    let buf = this.buf;
    if (!buf) return;
    // Robustness (RFC 9112 §2.2): empty lines before a request line are skipped.
    let skip = 0;
    while (skip + 1 < buf.length && buf[skip] === 13 && buf[skip + 1] === 10) skip += 2;
    if (skip) buf = this.buf = buf.subarray(skip);
    if (!buf.length) {
      this.buf = undefined;
      return;
    }
    let head: RequestHead;
    let end: number;
    try {
      end = headEnd(buf, this.limits.maxHeaderSize);
      if (end < 0) {
        if (this.phase === 'idle') {
          this.phase = 'head';
          this.deadline = Date.now() + this.limits.headersTimeoutMs;
        }
        return;
      }
      head = parseHead(buf.toString('latin1', 0, end - 4));
    } catch (err) {
      return this.refuse(err instanceof ParseError ? err : new ParseError(400, (err as Error).message));
    }
    if (this.phase === 'idle') this.deadline = Date.now() + this.limits.requestTimeoutMs;
    const rest = buf.length > end ? buf.subarray(end) : undefined;
    this.buf = undefined;
    const req = new H1Request(head, this.socket, this);
    this.req = req;
    if (head.upgrade) {
      this.detach();
      this.handlers.upgrade(req, this.socket, rest ?? Buffer.alloc(0));
      return;
    }
    const res = new H1Response(req, this, head.keepAlive && !this.clientEnded && !this.draining);
    this.res = res;
    this.wantsContinue = head.expectContinue;
    if (head.body.kind === 'none') {
      this.phase = 'answering';
      this.deadline = 0;
      if (rest) this.hold(rest);
    } else {
      this.phase = 'body';
      this.bodyLeft = head.body.kind === 'length' ? head.body.length : 0;
      this.decoder = head.body.kind === 'chunked' ? new ChunkedDecoder((c) => req.push(c)) : undefined;
      if (rest) {
        const used = this.feedBody(rest);
        if (used < 0) return; // refused before the handler saw it: nothing was forwarded
        if (used < rest.length) this.hold(rest.subarray(used));
      }
    }
    this.handlers.request(req, res);
  }

  /** Body bytes to the current request; returns how many were used, -1 after a refusal. */
  private feedBody(d: Buffer): number {
    const req = this.req!;
    let used: number;
    if (this.decoder) {
      try {
        used = this.decoder.push(d);
      } catch (err) {
        req.fail(err as Error);
        // The head was fine and the handler has the request; the body was not. Nothing more
        // can be read from this connection.
        this.refuse(err as ParseError);
        return -1;
      }
      if (this.decoder.done) this.bodyDone();
    } else {
      used = Math.min(this.bodyLeft, d.length);
      req.push(used === d.length ? d : d.subarray(0, used));
      this.bodyLeft -= used;
      if (this.bodyLeft === 0) this.bodyDone();
    }
    return used;
  }

  private bodyDone(): void {
    this.decoder = undefined;
    this.phase = 'answering';
    this.deadline = 0;
    this.req!.finish();
  }

  /** The handler started reading the body. */
  bodyWanted(): void {
    if (this.wantsContinue && this.res && !this.res.headersSent) this.write(Buffer.from('HTTP/1.1 100 Continue\r\n\r\n', 'latin1'));
    this.wantsContinue = false;
  }

  pauseBody(): void {
    if (!this.bodyPaused) {
      this.bodyPaused = true;
      this.socket.pause();
    }
  }

  resumeBody(): void {
    if (this.bodyPaused) {
      this.bodyPaused = false;
      this.socket.resume();
    }
  }

  /** A response's last bytes, held until the end of this turn of the event loop. */
  private pending: Buffer[] | undefined;

  /**
   * Writes to the client. `soon`: a response's last bytes, written at the end of this turn of
   * the event loop together with every other connection's (`writeSoon`). Measured: writing each
   * answer as it is ready wakes the client once per response and costs more CPU per request on
   * both sides; anything written now first sends what is held, so the order never changes.
   */
  write(data: Buffer, soon = false): boolean {
    if (this.socket.destroyed || this.socket.writableEnded) return false;
    if (soon) {
      if (this.pending) this.pending.push(data);
      else {
        this.pending = [data];
        writeSoon(this);
      }
      return true;
    }
    this.flush();
    return this.socket.write(data);
  }

  flush(): void {
    const held = this.pending;
    if (!held) return;
    this.pending = undefined;
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.socket.write(held.length === 1 ? held[0]! : Buffer.concat(held));
  }

  /** The response has ended: the next request, or the end of the connection. */
  responseDone(close: boolean): void {
    const req = this.req;
    this.req = undefined;
    this.res = undefined;
    this.decoder = undefined;
    this.wantsContinue = false;
    if (close || this.clientEnded || this.draining || !req?.complete) return this.endSoon();
    this.phase = 'idle';
    this.deadline = Date.now() + this.limits.keepAliveTimeoutMs;
    if (this.bodyPaused) this.resumeBody();
    if (this.socket.isPaused()) this.socket.resume();
    if (this.buf) this.parseNext();
  }

  /**
   * No more requests on this connection: read and drop what the client still sends while it
   * takes in the last answer (`last`, if given), then close; the sweep closes it if the client
   * has not within a few seconds.
   */
  private endSoon(last?: string): void {
    this.phase = 'idle';
    this.deadline = Date.now() + 5000;
    this.buf = undefined;
    this.socket.removeAllListeners('data');
    this.socket.on('data', () => {});
    this.socket.resume();
    this.flush();
    if (last === undefined) this.socket.end();
    else this.socket.end(last);
  }

  /** A request that cannot be read: 4xx with a request ID, and the connection closes. */
  private refuse(err: ParseError): void {
    const rid = this.handlers.malformed(err.message);
    if (this.res?.headersSent) return void this.socket.destroy();
    const body = `${err.status} ${STATUS_CODES[err.status]}: malformed request\nrequest id: ${rid}\n`;
    this.endSoon(`HTTP/1.1 ${err.status} ${STATUS_CODES[err.status]}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nx-postern-request-id: ${rid}\r\nconnection: close\r\n\r\n${body}`);
  }

  /**
   * The server is stopping: an idle connection ends now; a busy one after its answer, which
   * says `connection: close` if its head is not out yet.
   */
  drain(): void {
    if (this.closed || this.draining) return;
    this.draining = true;
    if (this.phase === 'idle' && !this.buf?.length) this.endSoon();
    else this.res?.closeAfterThis();
  }

  /** The socket leaves HTTP (an upgrade). */
  private detach(): void {
    // An earlier pipelined answer still held goes first: the socket is the handler's from here on.
    this.flush();
    this.phase = 'answering';
    this.deadline = 0;
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('end');
    this.socket.removeAllListeners('drain');
    this.socket.removeAllListeners('error');
    this.socket.removeAllListeners('close');
    this.closed = true;
  }

  closed = false;

  /** Called by the sweep when `deadline` has passed. */
  timedOut(): void {
    if (this.phase === 'idle') return void this.socket.destroy();
    if (this.phase === 'head' || this.phase === 'body') {
      this.req?.fail(new Error('the request took too long to arrive'));
      if (this.res?.headersSent) return void this.socket.destroy();
      const body = '408 Request Timeout\n';
      this.endSoon(`HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
    }
  }
}

/** Held answers go out at the end of this turn of the event loop, every connection's together. */
const writeSoon = atEndOfTurn<Connection>((conn) => conn.flush());

/** The proxy's HTTP/1.1 server. `drain()` ends its connections once their answers are out. */
export type H1Server = Server & { drain(): void };

/** A TCP server speaking HTTP/1.1 to `handlers`. Timeouts are checked once a second. */
export function createH1Server(handlers: H1Handlers, limits: H1Limits = defaultLimits): H1Server {
  const connections = new Set<Connection>();
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
    const conn = new Connection(socket, handlers, limits);
    connections.add(conn);
    socket.once('close', () => connections.delete(conn));
    if (draining) conn.drain();
  }) as H1Server;
  let draining = false;
  server.drain = () => {
    draining = true;
    for (const c of connections) c.drain();
  };
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const c of connections) if (!c.closed && c.deadline && c.deadline < now) c.timedOut();
  }, 1000);
  sweep.unref();
  server.once('close', () => clearInterval(sweep));
  return server;
}
