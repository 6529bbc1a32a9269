import assert from 'node:assert/strict';
import { connect, type Server } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { ChunkedDecoder, ParseError, headEnd, parseHead } from '../src/h1/parse.js';
import { createH1Server, type H1Request, type H1Response } from '../src/h1/server.js';
import { writable } from '../src/exchange.js';

function parseError(text: string): ParseError {
  try {
    const buf = Buffer.from(text, 'latin1');
    const end = headEnd(buf, 32 * 1024);
    parseHead(buf.toString('latin1', 0, end - 4));
  } catch (err) {
    if (err instanceof ParseError) return err;
    throw err;
  }
  assert.fail(`accepted ${JSON.stringify(text)}`);
}

describe('HTTP/1.1 request parser', () => {
  const refused: [string, string, number][] = [
    ['no Host in HTTP/1.1', 'GET / HTTP/1.1\r\n\r\n', 400],
    ['two Hosts', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400],
    ['a space in the target', 'GET /a b HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['a control character in the target', 'GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['HTTP/2.0 on an HTTP/1.1 listener', 'GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505],
    ['a garbled version', 'GET / HTTX/1.1\r\nHost: a\r\n\r\n', 400],
    ['a method that is not a token', 'G(T / HTTP/1.1\r\nHost: a\r\n\r\n', 400],
    ['whitespace before the colon', 'GET / HTTP/1.1\r\nHost : a\r\n\r\n', 400],
    ['obs-fold', 'GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n', 400],
    ['NUL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: 1\x002\r\n\r\n', 400],
    ['DEL in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: 1\x7f\r\n\r\n', 400],
    ['a bare CR in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: 1\r2\r\n\r\n', 400],
    ['a bare LF in a value', 'GET / HTTP/1.1\r\nHost: a\r\nX: 1\n2\r\n\r\n', 400],
    ['a head ended by bare LFs', 'GET / HTTP/1.1\nHost: a\n\n', 400],
    ['two equal Content-Lengths', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n', 400],
    ['a signed Content-Length', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n', 400],
    ['a Content-Length list', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n', 400],
    ['Content-Length with Transfer-Encoding', 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n', 400],
    ['Transfer-Encoding gzip, chunked', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n', 400],
    ['Transfer-Encoding twice', 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n', 400],
    ['Transfer-Encoding in HTTP/1.0', 'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n', 400],
  ];
  for (const [name, text, status] of refused) {
    it(`refuses ${name} with ${status}`, () => {
      assert.equal(parseError(text).status, status);
    });
  }

  it('refuses a head larger than the limit with 431, before it has all arrived', () => {
    const big = Buffer.from(`GET / HTTP/1.1\r\nHost: a\r\nX: ${'a'.repeat(40_000)}`);
    assert.throws(() => headEnd(big, 32 * 1024), (e: ParseError) => e.status === 431);
  });

  it('reads fields as Node does: lower-case names, repeats joined, some first-wins', () => {
    const h = parseHead('GET /p?q=1 HTTP/1.1\r\nHost: a\r\nAccept: x\r\nACCEPT: y\r\nCookie: a=1\r\nCookie: b=2\r\nSet-Cookie: s=1\r\nSet-Cookie: s=2\r\nAuthorization: one\r\nAuthorization: two\r\nX-Pad:   spaced  ');
    assert.equal(h.method, 'GET');
    assert.equal(h.url, '/p?q=1');
    assert.equal(h.headers.accept, 'x, y');
    assert.equal(h.headers.cookie, 'a=1; b=2');
    assert.deepEqual(h.headers['set-cookie'], ['s=1', 's=2']);
    assert.equal(h.headers.authorization, 'one');
    assert.equal(h.headers['x-pad'], 'spaced');
    assert.deepEqual(h.rawHeaders.slice(0, 4), ['Host', 'a', 'Accept', 'x']);
    assert.deepEqual(h.body, { kind: 'none' });
    assert.equal(h.keepAlive, true);
  });

  it('keep-alive follows the version and Connection; upgrade needs both headers', () => {
    assert.equal(parseHead('GET / HTTP/1.1\r\nHost: a\r\nConnection: close').keepAlive, false);
    assert.equal(parseHead('GET / HTTP/1.0').keepAlive, false);
    assert.equal(parseHead('GET / HTTP/1.0\r\nConnection: Keep-Alive').keepAlive, true);
    assert.equal(parseHead('GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket').upgrade, true);
    assert.equal(parseHead('GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket').upgrade, false);
    assert.deepEqual(parseHead('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12').body, { kind: 'length', length: 12 });
    assert.deepEqual(parseHead('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked').body, { kind: 'chunked' });
  });

  it('decodes chunked bodies split anywhere, and stops at the end of the body', () => {
    const wire = Buffer.from('5;name=value\r\nhello\r\n1a\r\n, and twenty-six more b...\r\n0\r\nTrailer-A: 1\r\n\r\nGET /next');
    const bodyEnd = wire.indexOf('GET /next');
    for (const step of [1, 2, 3, 7, wire.length]) {
      const out: Buffer[] = [];
      const d = new ChunkedDecoder((c) => out.push(Buffer.from(c)));
      let at = 0;
      while (!d.done && at < wire.length) at += d.push(wire.subarray(at, Math.min(at + step, wire.length)));
      assert.equal(Buffer.concat(out).toString(), 'hello, and twenty-six more b...', `step ${step}`);
      assert.equal(at, bodyEnd, `step ${step}`);
    }
  });

  const badChunks: [string, string][] = [
    ['a size that is not hex', 'zz\r\nhello\r\n0\r\n\r\n'],
    ['a size with a sign', '-5\r\nhello\r\n0\r\n\r\n'],
    ['data longer than its size', '3\r\nhello\r\n0\r\n\r\n'],
    ['a bare LF after the size', '5\nhello\r\n0\r\n\r\n'],
    ['a bare CR inside the size line', '5\r;x\r\nhello\r\n0\r\n\r\n'],
    ['a size beyond 48 bits', 'fffffffffffff\r\n'],
    ['a malformed trailer', '0\r\nno colon here\r\n\r\n'],
  ];
  for (const [name, wire] of badChunks) {
    it(`refuses a chunked body with ${name}`, () => {
      const d = new ChunkedDecoder(() => {});
      assert.throws(() => d.push(Buffer.from(wire)), ParseError);
    });
  }
});

/** Sends bytes, returns all that comes back until the server closes or `ms` pass. */
function exchange(port: number, bytes: string | string[], ms = 1500): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => (s.destroy(), resolve(out)), ms);
    s.on('data', (d: Buffer) => (out += d.toString('latin1')));
    s.on('close', () => (clearTimeout(timer), resolve(out)));
    s.on('error', reject);
    if (typeof bytes === 'string') s.write(bytes);
    else {
      // Written in separate packets, a few milliseconds apart.
      let i = 0;
      const next = () => {
        if (i < bytes.length) s.write(bytes[i++]!, () => setTimeout(next, 5));
      };
      next();
    }
  });
}

describe('HTTP/1.1 listener', () => {
  let server: Server;
  let port: number;
  const malformed: string[] = [];
  let floodWaiting = false;
  let floodReleased = false;

  before(async () => {
    server = createH1Server(
      {
        request: (req: H1Request, res: H1Response) => void answer(req, res).catch(() => res.destroy()),
        upgrade: (_req, socket) => socket.end('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: test\r\n\r\nraw bytes now'),
        malformed: (reason) => {
          malformed.push(reason);
          return `rid-${malformed.length}`;
        },
      },
      { maxHeaderSize: 8 * 1024, headersTimeoutMs: 800, requestTimeoutMs: 2000, keepAliveTimeoutMs: 1500 },
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as { port: number }).port;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  async function answer(req: H1Request, res: H1Response): Promise<void> {
    const url = req.url;
    if (url === '/echo') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c);
      res.setHeader('content-type', 'text/plain');
      res.end(Buffer.concat(chunks));
    } else if (url === '/stream') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.flushHeaders();
      res.write(Buffer.from('one,'));
      res.write(Buffer.from('two'));
      res.addTrailers({ 'x-done': 'yes' });
      res.end();
    } else if (url === '/flood') {
      // Writes until the client stops reading, then waits; the test closes the client.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 120);
      while (res.write(chunk)) await new Promise((r) => setImmediate(r));
      floodWaiting = true;
      await writable(res);
      floodReleased = res.destroyed;
    } else if (url === '/nocontent') {
      res.statusCode = 204;
      res.end();
    } else if (url === '/deny') {
      res.statusCode = 403;
      res.end('denied\n'); // the body is never read
    } else if (url === '/inject') {
      try {
        res.setHeader('x-evil', 'a\r\nset-cookie: stolen=1');
        res.end('set');
      } catch (err) {
        res.statusCode = 500;
        res.end(`refused: ${(err as Error).message}\n`);
      }
    } else res.end(`${req.method} ${url}\n`);
  }

  it('answers pipelined requests in order, on one connection', async () => {
    const out = await exchange(port, 'GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.deepEqual(out.match(/GET \/[abc]/g), ['GET /a', 'GET /b', 'GET /c']);
    assert.equal(out.match(/HTTP\/1\.1 200 OK/g)?.length, 3);
    assert.match(out, /connection: close/);
  });

  it('reads a chunked request body sent in pieces, then serves the next request', async () => {
    const out = await exchange(port, [
      'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi',
      'ki\r\n5\r\npedia\r\n0\r\n\r\n',
      'GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    ]);
    assert.match(out, /content-length: 9\r\n[\s\S]*\r\n\r\nWikipedia/);
    assert.match(out, /GET \/after/);
  });

  it('frames a body of unknown length as chunked for HTTP/1.1, with trailers; close-delimited for HTTP/1.0', async () => {
    const v11 = await exchange(port, 'GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(v11, /transfer-encoding: chunked/);
    assert.match(v11, /\r\n\r\n4\r\none,\r\n3\r\ntwo\r\n0\r\nx-done: yes\r\n\r\n$/);
    const v10 = await exchange(port, 'GET /stream HTTP/1.0\r\n\r\n');
    assert.doesNotMatch(v10, /transfer-encoding/);
    assert.match(v10, /connection: close\r\n\r\none,two$/);
  });

  it('sends no body for HEAD and 204', async () => {
    const head = await exchange(port, 'HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(head, /content-length: 8\r\n/); // "HEAD /x\n", the body a GET would get
    assert.match(head, /\r\n\r\n$/);
    const none = await exchange(port, 'GET /nocontent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(none, /^HTTP\/1\.1 204 No Content/);
    assert.doesNotMatch(none, /content-length|transfer-encoding/);
  });

  it('sends 100 Continue when the handler reads a body the client is waiting to send', async () => {
    const out = await exchange(port, 'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n', 500);
    assert.match(out, /^HTTP\/1\.1 100 Continue\r\n\r\n/);
  });

  it('closes after answering when the request body was not read', async () => {
    const out = await exchange(port, 'POST /deny HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial');
    assert.match(out, /^HTTP\/1\.1 403 Forbidden/);
    assert.match(out, /connection: close/);
  });

  it('refuses malformed requests with 400, a request ID and a closed connection; the handler never sees them', async () => {
    const out = await exchange(port, 'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc');
    assert.match(out, /^HTTP\/1\.1 400 Bad Request\r\n/);
    assert.match(out, /x-postern-request-id: rid-\d+/);
    assert.match(out, /connection: close/);
    assert.doesNotMatch(out, /abc/);
    assert.ok(malformed.includes('more than one Content-Length'));
  });

  it('refuses a bad chunk that arrives after the head with 400', async () => {
    const out = await exchange(port, ['POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n', '5\r\nhello\r\nzz\r\n']);
    assert.match(out, /^HTTP\/1\.1 400 Bad Request/);
  });

  it('refuses response headers that would split the response', async () => {
    const out = await exchange(port, 'GET /inject HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(out, /^HTTP\/1\.1 500 /);
    assert.doesNotMatch(out.split('\r\n\r\n')[0]!, /set-cookie/i);
  });

  it('answers 408 to a head that takes too long, and closes idle keep-alive connections', async () => {
    const slow = await exchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n', 3000);
    assert.match(slow, /^HTTP\/1\.1 408 Request Timeout/);
    const started = Date.now();
    const idle = await exchange(port, 'GET /a HTTP/1.1\r\nHost: x\r\n\r\n', 5000);
    assert.match(idle, /GET \/a/);
    const waited = Date.now() - started;
    assert.ok(waited >= 1400 && waited < 4000, `closed after ${waited} ms`);
  });

  it('releases a writer waiting for drain when the client goes away', async () => {
    const s = connect(port, '127.0.0.1');
    s.pause(); // read nothing: the server's writes back up
    s.write('GET /flood HTTP/1.1\r\nHost: x\r\n\r\n');
    for (let i = 0; i < 200 && !floodWaiting; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(floodWaiting, 'the handler never had to wait');
    s.destroy();
    for (let i = 0; i < 200 && !floodReleased; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(floodReleased, 'the handler still waits for a drain that cannot come');
  });

  it('hands upgrades to the upgrade handler with the socket', async () => {
    const out = await exchange(port, 'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n');
    assert.match(out, /^HTTP\/1\.1 101 Switching Protocols[\s\S]*raw bytes now$/);
  });

  it('sends an answer held for the end of the turn before a pipelined upgrade takes the socket', async () => {
    const out = await exchange(port, 'GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n');
    assert.match(out, /^HTTP\/1\.1 200 OK[\s\S]*GET \/a\nHTTP\/1\.1 101 Switching Protocols[\s\S]*raw bytes now$/);
  });
});
