/**
 * A strict HTTP/1.1 request parser (RFC 9112) for the proxy's own listeners. Strict means: what
 * request smuggling and header injection need is refused, not repaired — bare LF or CR, obs-fold,
 * whitespace before a colon, control characters in values, several Content-Lengths (even equal
 * ones), Content-Length beside Transfer-Encoding, a Transfer-Encoding other than `chunked`, and
 * any malformed chunk. Each refusal carries the status to answer and a reason for the log.
 */
import type { IncomingHttpHeaders } from 'node:http';

export class ParseError extends Error {
  constructor(
    readonly status: 400 | 413 | 431 | 501 | 505,
    message: string,
  ) {
    super(message);
  }
}

export interface RequestHead {
  method: string;
  url: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  /** Names in lower case; repeats joined as Node joins them (cookie by "; ", set-cookie as a list, most by ", "). */
  headers: IncomingHttpHeaders;
  /** Name, value, name, value… as received. */
  rawHeaders: string[];
  /** Body framing: none, a length, or chunked. */
  body: { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' };
  keepAlive: boolean;
  upgrade: boolean;
  expectContinue: boolean;
}

/** A method or field name (RFC 9110 §5.6.2). */
export const token = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Field values: HTAB, SP, visible ASCII and obs-text; nothing else (no CR, LF, NUL, DEL). */
export const badValue = /[^\t\x20-\x7e\x80-\xff]/;
/** A Connection field (lower-cased or not) that names `close`. */
export const namesClose = /(^|,)\s*close\s*(,|$)/i;
/** Request targets: visible ASCII only. */
const badTarget = /[^\x21-\x7e]/;

/** Field names seen, to their lower-case form; bounded, so names a client invents cannot grow it. */
const knownNames = new Map<string, string>();

/** The lower-case form of a valid field name (a token), undefined for an invalid one. */
export function fieldKey(name: string): string | undefined {
  const known = knownNames.get(name);
  if (known !== undefined) return known;
  if (!token.test(name)) return undefined;
  const key = name.toLowerCase();
  if (knownNames.size < 4096) knownNames.set(name, key);
  return key;
}

/**
 * One header line of a request or a response, checked the same way for both: `name: value`,
 * the name a token, no whitespace before the colon, no obs-fold, no control characters in the
 * value. Returns the field, or why it was refused.
 */
export function fieldLine(line: string): { name: string; key: string; value: string } | string {
  const colon = line.indexOf(':');
  if (colon <= 0) return line[0] === ' ' || line[0] === '\t' ? 'obs-fold continuation line' : 'malformed header line';
  const name = line.slice(0, colon);
  const key = fieldKey(name);
  if (key === undefined) return `invalid header name ${JSON.stringify(name.slice(0, 40))}`;
  const value = line.slice(colon + 1).trim();
  if (badValue.test(value)) return `invalid character in header ${name}`;
  return { name, key, value };
}

/** Fields where Node keeps the first of several (the rest are dropped). */
const firstWins = new Set(['age', 'authorization', 'content-type', 'etag', 'expires', 'from', 'if-modified-since', 'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'referer', 'retry-after', 'server', 'user-agent']);

/**
 * Finds the end of a request head in `buf` (the index just past CRLFCRLF), -1 if it has not all
 * arrived yet. Throws when it never can be valid: a head that ends with bare LFs, or is too large.
 */
export function headEnd(buf: Buffer, maxHeaderSize: number): number {
  const end = buf.indexOf('\r\n\r\n', 0, 'latin1');
  if (end >= 0) {
    if (end + 4 > maxHeaderSize) throw new ParseError(431, 'request header fields too large');
    return end + 4;
  }
  if (buf.indexOf('\n\n', 0, 'latin1') >= 0 || buf.indexOf('\n\r\n', 0, 'latin1') >= 0) throw new ParseError(400, 'bare LF line ending');
  if (buf.length > maxHeaderSize) throw new ParseError(431, 'request header fields too large');
  return -1;
}

/** Parses a complete head (without its final CRLFCRLF). */
export function parseHead(text: string, maxHeaders = 1000): RequestHead {
  const lines = text.split('\r\n');
  const requestLine = lines[0]!;
  const sp1 = requestLine.indexOf(' ');
  const sp2 = requestLine.indexOf(' ', sp1 + 1);
  if (sp1 <= 0 || sp2 < 0 || requestLine.indexOf(' ', sp2 + 1) >= 0) throw new ParseError(400, 'malformed request line');
  const method = requestLine.slice(0, sp1);
  const url = requestLine.slice(sp1 + 1, sp2);
  const version = requestLine.slice(sp2 + 1);
  if (!token.test(method)) throw new ParseError(400, 'invalid method');
  if (url === '' || badTarget.test(url)) throw new ParseError(400, 'invalid request target');
  let minor: number;
  if (version === 'HTTP/1.1') minor = 1;
  else if (version === 'HTTP/1.0') minor = 0;
  else if (/^HTTP\/\d\.\d$/.test(version)) throw new ParseError(505, `${version} is not supported on this listener`);
  else throw new ParseError(400, 'malformed HTTP version');
  if (lines.length - 1 > maxHeaders) throw new ParseError(431, 'too many header fields');

  const headers: IncomingHttpHeaders = {};
  const rawHeaders: string[] = [];
  let contentLength: string | undefined;
  let contentLengths = 0;
  let transferEncoding: string | undefined;
  let hosts = 0;
  for (let i = 1; i < lines.length; i++) {
    const field = fieldLine(lines[i]!);
    if (typeof field === 'string') throw new ParseError(400, field);
    const { name, key, value } = field;
    rawHeaders.push(name, value);
    const have = headers[key];
    if (key === 'content-length') {
      contentLengths++;
      contentLength = value;
    } else if (key === 'transfer-encoding') transferEncoding = transferEncoding === undefined ? value : `${transferEncoding}, ${value}`;
    else if (key === 'host') hosts++;
    if (have === undefined) headers[key] = key === 'set-cookie' ? [value] : value;
    else if (key === 'set-cookie') (have as string[]).push(value);
    else if (firstWins.has(key) || key === 'content-length' || key === 'host') continue;
    else headers[key] = `${have as string}${key === 'cookie' ? '; ' : ', '}${value}`;
  }

  if (minor === 1 && hosts !== 1) throw new ParseError(400, hosts ? 'more than one Host header' : 'missing Host header');
  if (hosts > 1) throw new ParseError(400, 'more than one Host header');
  let body: RequestHead['body'] = { kind: 'none' };
  if (contentLengths > 1) throw new ParseError(400, 'more than one Content-Length');
  if (transferEncoding !== undefined) {
    if (contentLengths) throw new ParseError(400, 'both Content-Length and Transfer-Encoding');
    if (minor === 0) throw new ParseError(400, 'Transfer-Encoding in an HTTP/1.0 request');
    if (transferEncoding.toLowerCase() !== 'chunked') throw new ParseError(400, `unsupported Transfer-Encoding "${transferEncoding}"`);
    body = { kind: 'chunked' };
  } else if (contentLength !== undefined) {
    if (!/^\d{1,15}$/.test(contentLength)) throw new ParseError(400, 'invalid Content-Length');
    const length = Number(contentLength);
    if (length > 0) body = { kind: 'length', length };
  }

  const connection = typeof headers.connection === 'string' ? headers.connection.toLowerCase() : '';
  const keepAlive = minor === 1 ? !namesClose.test(connection) : /(^|,)\s*keep-alive\s*(,|$)/.test(connection);
  const upgrade = headers.upgrade !== undefined && /(^|,)\s*upgrade\s*(,|$)/.test(connection);
  const expect = headers.expect;
  const expectContinue = minor === 1 && typeof expect === 'string' && expect.toLowerCase() === '100-continue';
  return { method, url, minor, headers, rawHeaders, body, keepAlive, upgrade, expectContinue };
}

/**
 * Decodes a chunked body as its bytes arrive. `push` takes what came from the socket and returns
 * how many of those bytes belonged to the body (the rest is the next request); decoded data goes
 * to `onData`. Chunk extensions are checked and dropped; trailers are checked and dropped.
 */
export class ChunkedDecoder {
  private state: 'size' | 'data' | 'data-crlf' | 'trailers' | 'done' = 'size';
  private remaining = 0;
  private line = '';
  private trailerBytes = 0;

  constructor(private readonly onData: (chunk: Buffer) => void) {}

  get done(): boolean {
    return this.state === 'done';
  }

  push(buf: Buffer): number {
    let i = 0;
    while (i < buf.length && this.state !== 'done') {
      if (this.state === 'data') {
        const n = Math.min(this.remaining, buf.length - i);
        this.onData(buf.subarray(i, i + n));
        i += n;
        this.remaining -= n;
        if (this.remaining === 0) this.state = 'data-crlf';
        continue;
      }
      // Line-based states: gather up to CRLF.
      const lf = buf.indexOf(10, i);
      const end = lf < 0 ? buf.length : lf + 1;
      this.line += buf.toString('latin1', i, end);
      i = end;
      if (this.line.length > 4096 && this.state !== 'trailers') throw new ParseError(400, 'chunk line too long');
      if (lf < 0) continue;
      if (!this.line.endsWith('\r\n') || this.line.indexOf('\r') !== this.line.length - 2) throw new ParseError(400, 'bad line ending in chunked body');
      const line = this.line.slice(0, -2);
      this.line = '';
      if (this.state === 'data-crlf') {
        if (line !== '') throw new ParseError(400, 'chunk data longer than its size');
        this.state = 'size';
      } else if (this.state === 'size') {
        const m = /^([0-9A-Fa-f]{1,12})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?$/.exec(line);
        if (!m) throw new ParseError(400, 'bad chunk size');
        this.remaining = parseInt(m[1]!, 16);
        this.state = this.remaining === 0 ? 'trailers' : 'data';
      } else {
        // trailers: header lines until an empty one
        this.trailerBytes += line.length + 2;
        if (this.trailerBytes > 16 * 1024) throw new ParseError(431, 'trailers too large');
        if (line === '') this.state = 'done';
        else {
          const colon = line.indexOf(':');
          if (colon <= 0 || !token.test(line.slice(0, colon)) || badValue.test(line.slice(colon + 1))) throw new ParseError(400, 'malformed trailer');
        }
      }
    }
    return i;
  }
}
