import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, afterEach, describe, it } from 'node:test';
import { H1Pool, UpstreamError, parseResponseHead, type H1PoolOptions } from '../src/h1/client.js';
import type { UpstreamAnswer } from '../src/upstream-call.js';

/**
 * A scripted upstream on a real socket: `answer` gets each request head (and what followed it)
 * and the socket, and writes whatever bytes the case needs. Records every connection.
 */
class Scripted {
  server: Server;
  sockets: Socket[] = [];
  heads: string[] = [];
  port = 0;

  constructor(answer: (head: string, rest: Buffer, socket: Socket, n: number) => void) {
    this.server = createServer((socket) => {
      this.sockets.push(socket);
      let buf = Buffer.alloc(0);
      socket.on('error', () => {});
      socket.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const head = buf.toString('latin1', 0, end);
          const rest = buf.subarray(end + 4);
          buf = Buffer.alloc(0);
          this.heads.push(head);
          answer(head, rest, socket, this.heads.length);
          return;
        }
      });
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  stop(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

const opts: H1PoolOptions = { connections: 4, keepAliveTimeoutMs: 30_000, headersTimeoutMs: 5000, bodyTimeoutMs: 5000, connectTimeoutMs: 2000 };

async function text(a: UpstreamAnswer): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of a.body) parts.push(c);
  return Buffer.concat(parts).toString();
}

async function* chunks(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) {
    await new Promise((r) => setTimeout(r, 5));
    yield Buffer.from(p);
  }
}

function refusal(p: Promise<unknown>): Promise<Error & { code?: string }> {
  return p.then(
    () => assert.fail('the request should have failed'),
    (e: Error & { code?: string }) => e,
  );
}

describe('HTTP/1.1 response parser', () => {
  it('frames bodies as RFC 9112 §6.3 says', () => {
    assert.equal(parseResponseHead('HTTP/1.1 200 OK\r\nContent-Length: 5', 'GET').framing, 'length');
    assert.equal(parseResponseHead('HTTP/1.1 200 OK\r\nContent-Length: 5', 'HEAD').framing, 'none');
    assert.equal(parseResponseHead('HTTP/1.1 204 No Content\r\nContent-Length: 5', 'GET').framing, 'none');
    assert.equal(parseResponseHead('HTTP/1.1 304 Not Modified', 'GET').framing, 'none');
    assert.equal(parseResponseHead('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked', 'GET').framing, 'chunked');
    assert.equal(parseResponseHead('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip', 'GET').framing, 'close');
    assert.equal(parseResponseHead('HTTP/1.1 200 OK', 'GET').framing, 'close');
    assert.equal(parseResponseHead('HTTP/1.1 200', 'GET').status, 200);
    // Both: chunked wins, and the connection is not reused.
    const both = parseResponseHead('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked', 'GET');
    assert.equal(both.framing, 'chunked');
    assert.equal(both.keepAlive, false);
    assert.equal(parseResponseHead('HTTP/1.0 200 OK\r\nContent-Length: 1', 'GET').keepAlive, false);
    assert.equal(parseResponseHead('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1', 'GET').keepAlive, false);
    assert.equal(parseResponseHead('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 1', 'GET').idleMs, 5000);
  });

  it('keeps repeated fields, in order, and one of equal Content-Lengths', () => {
    const h = parseResponseHead('HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 3\r\nContent-Length: 3', 'GET');
    assert.deepEqual(h.headers['set-cookie'], ['a=1', 'b=2']);
    assert.equal(h.headers['content-length'], '3');
  });

  const refused: [string, string][] = [
    ['a garbled status line', 'HTTP/1.1 2000 OK'],
    ['HTTP/2 on an HTTP/1.1 connection', 'HTTP/2.0 200 OK'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nX: 1\r\n 2'],
    ['a bare CR in a value', 'HTTP/1.1 200 OK\r\nX: 1\r2'],
    ['whitespace before the colon', 'HTTP/1.1 200 OK\r\nX : 1'],
    ['differing Content-Lengths', 'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2'],
    ['a signed Content-Length', 'HTTP/1.1 200 OK\r\nContent-Length: +1'],
  ];
  for (const [name, head] of refused)
    it(`refuses ${name}`, () => {
      assert.throws(() => parseResponseHead(head, 'GET'), (e: UpstreamError) => e.code === 'ERR_UPSTREAM_PROTOCOL');
    });
});

describe('HTTP/1.1 upstream client', () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanup.splice(0)) c();
  });
  after(() => {
    for (const c of cleanup.splice(0)) c();
  });
  const start = async (answer: ConstructorParameters<typeof Scripted>[0], o: Partial<H1PoolOptions> = {}) => {
    const up = await new Scripted(answer).start();
    const pool = new H1Pool(`http://127.0.0.1:${up.port}`, { ...opts, ...o });
    cleanup.push(() => pool.destroy(), () => up.stop());
    return { up, pool };
  };
  const ok = (socket: Socket, body = 'hello') => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`);

  it('reuses one kept-alive connection for requests in turn, and sends Host and the headers given', async () => {
    const { up, pool } = await start((_h, _r, s) => ok(s));
    for (let i = 0; i < 3; i++) {
      const a = await pool.request({ method: 'GET', path: `/p/${i}?q=1`, headers: { 'x-one': 'a', 'x-list': ['b', 'c'] }, body: null });
      assert.equal(a.statusCode, 200);
      assert.equal(a.whole?.()?.toString(), 'hello');
    }
    assert.equal(up.sockets.length, 1);
    assert.match(up.heads[2]!, /^GET \/p\/2\?q=1 HTTP\/1\.1\r\n/);
    assert.match(up.heads[0]!, new RegExp(`\r\nhost: 127\\.0\\.0\\.1:${up.port}(\r\n|$)`));
    assert.match(up.heads[0]!, /\r\nx-list: b\r\nx-list: c/);
    assert.doesNotMatch(up.heads[0]!, /content-length/i);
  });

  it('never copies the caller’s framing or connection headers, and announces an empty POST', async () => {
    const { up, pool } = await start((_h, _r, s) => ok(s));
    await pool.request({ method: 'POST', path: '/', headers: { 'transfer-encoding': 'chunked', connection: 'close', 'keep-alive': '1', 'content-length': '99' }, body: null });
    assert.doesNotMatch(up.heads[0]!, /transfer-encoding|connection|keep-alive|content-length: 99/i);
    assert.match(up.heads[0]!, /\r\ncontent-length: 0/);
  });

  it('refuses a header value that could split the request, before writing anything', async () => {
    const { up, pool } = await start((_h, _r, s) => ok(s));
    const e = await refusal(pool.request({ method: 'GET', path: '/', headers: { 'x-bad': 'a\r\nx-injected: 1' }, body: null }));
    assert.equal(e.code, 'ERR_UPSTREAM_PROTOCOL');
    const e2 = await refusal(pool.request({ method: 'GET', path: '/a b', headers: {}, body: null }));
    assert.equal(e2.code, 'ERR_UPSTREAM_PROTOCOL');
    assert.equal(up.heads.length, 0);
  });

  it('reads a chunked answer split across packets, and reuses the connection after it', async () => {
    const { up, pool } = await start((_h, _r, s) => {
      s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel');
      setTimeout(() => s.write('lo\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n'), 20);
    });
    assert.equal(await text(await pool.request({ method: 'GET', path: '/', headers: {}, body: null })), 'hello world');
    assert.equal(await text(await pool.request({ method: 'GET', path: '/', headers: {}, body: null })), 'hello world');
    assert.equal(up.sockets.length, 1);
  });

  it('reads a body that ends with the connection, and does not reuse that connection', async () => {
    const { up, pool } = await start((_h, _r, s) => s.end('HTTP/1.1 200 OK\r\n\r\nuntil the end'));
    assert.equal(await text(await pool.request({ method: 'GET', path: '/', headers: {}, body: null })), 'until the end');
    assert.equal(await text(await pool.request({ method: 'GET', path: '/', headers: {}, body: null })), 'until the end');
    assert.equal(up.sockets.length, 2);
  });

  it('skips informational answers and reads no body after HEAD, 204 or 304', async () => {
    const { pool } = await start((head, _r, s) => {
      if (head.startsWith('HEAD')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n');
      else if (head.includes('/204')) s.write('HTTP/1.1 204 No Content\r\n\r\n');
      else s.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
    const headAnswer = await pool.request({ method: 'HEAD', path: '/', headers: {}, body: null });
    assert.equal(headAnswer.headers['content-length'], '100');
    assert.equal(headAnswer.whole?.()?.length, 0);
    assert.equal((await pool.request({ method: 'GET', path: '/204', headers: {}, body: null })).statusCode, 204);
    const a = await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    assert.equal(a.statusCode, 200);
    assert.equal(await text(a), 'ok');
  });

  it('answers a malformed response with ERR_UPSTREAM_PROTOCOL and closes that connection', async () => {
    const { up, pool } = await start((_h, _r, s) => s.write('HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n'));
    const e = await refusal(pool.request({ method: 'GET', path: '/', headers: {}, body: null }));
    assert.equal(e.code, 'ERR_UPSTREAM_PROTOCOL');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(up.sockets[0]!.destroyed || up.sockets[0]!.readableEnded, true);
  });

  it('refuses bytes after a complete answer (a smuggled second response) by not reusing the connection', async () => {
    const { up, pool } = await start((_h, _r, s) => s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil'));
    assert.equal(await text(await pool.request({ method: 'GET', path: '/', headers: {}, body: null })), 'ok');
    assert.equal(await text(await pool.request({ method: 'GET', path: '/', headers: {}, body: null })), 'ok');
    assert.equal(up.sockets.length, 2);
  });

  it('streams a request body chunked, or as is with the Content-Length given', async () => {
    const bodies: string[] = [];
    const { up, pool } = await start((head, rest, s) => {
      let got = rest;
      const done = () => {
        bodies.push(got.toString('latin1'));
        ok(s);
      };
      const want = /content-length: (\d+)/.exec(head);
      const check = () => (want ? got.length >= Number(want[1]) : got.includes('0\r\n\r\n')) && (s.removeAllListeners('data'), done());
      if (check()) return;
      s.removeAllListeners('data');
      s.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        check();
      });
    });
    await pool.request({ method: 'POST', path: '/', headers: {}, body: chunks('ab', 'cde') });
    assert.match(up.heads[0]!, /transfer-encoding: chunked/);
    assert.equal(bodies[0], '2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n');
    const other = await new Scripted((head, rest, s) => {
      assert.match(head, /content-length: 5/);
      const all = [rest];
      const end = () => Buffer.concat(all).length >= 5 && (bodies.push(Buffer.concat(all).toString()), ok(s));
      if (!end()) s.on('data', (d: Buffer) => (all.push(d), end()));
    }).start();
    const pool2 = new H1Pool(`http://127.0.0.1:${other.port}`, opts);
    cleanup.push(() => pool2.destroy(), () => other.stop());
    await pool2.request({ method: 'PUT', path: '/', headers: { 'content-length': '5' }, body: chunks('ab', 'cde') });
    assert.equal(bodies[1], 'abcde');
  });

  it('fails a streamed body that is longer than its Content-Length, without sending the excess', async () => {
    const { pool } = await start(() => {});
    const e = await refusal(pool.request({ method: 'PUT', path: '/', headers: { 'content-length': '3' }, body: chunks('ab', 'cde') }));
    assert.equal(e.code, 'ERR_UPSTREAM_REQUEST_BODY');
  });

  it('times out waiting for the head (headers timeout) and between body bytes (body timeout)', async () => {
    const { pool } = await start(
      (head, _r, s) => {
        if (head.includes('/slow-body')) s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf');
      },
      { headersTimeoutMs: 200, bodyTimeoutMs: 200 },
    );
    const t0 = Date.now();
    const e = await refusal(pool.request({ method: 'GET', path: '/silent', headers: {}, body: null }));
    assert.equal(e.code, 'ERR_UPSTREAM_HEADERS_TIMEOUT');
    assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
    const a = await pool.request({ method: 'GET', path: '/slow-body', headers: {}, body: null });
    const e2 = await refusal(text(a));
    assert.equal(e2.code, 'ERR_UPSTREAM_BODY_TIMEOUT');
  });

  it('sends an idempotent request again when a kept-alive connection was closed under it, never a POST', async () => {
    let n = 0;
    const { up, pool } = await start((_h, _r, s) => {
      n++;
      // The first connection answers once and then, without a FIN the client can see in time, dies.
      if (n === 2) return s.destroy();
      ok(s);
    });
    await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    const again = await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    assert.equal(again.statusCode, 200);
    assert.equal(up.sockets.length, 2);
    // And a POST on a connection that dies is reported, not repeated.
    n = 1;
    const { pool: pool2 } = await start((_h, _r, s) => (++n === 3 ? s.destroy() : ok(s)));
    await pool2.request({ method: 'POST', path: '/', headers: {}, body: Buffer.from('x') });
    const e = await refusal(pool2.request({ method: 'POST', path: '/', headers: {}, body: Buffer.from('x') }));
    assert.ok(e.code === 'ECONNRESET' || e.code === 'ERR_UPSTREAM_CLOSED', String(e.code));
  });

  it('does not reuse a connection past the idle time the upstream announced (less a second)', async () => {
    const { up, pool } = await start((_h, _r, s) => s.write('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 0\r\n\r\n'));
    await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    assert.equal(up.sockets.length, 1);
    await new Promise((r) => setTimeout(r, 1100));
    await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    assert.equal(up.sockets.length, 2);
  });

  it('holds requests beyond its connection limit until one is free', async () => {
    const waiting: Socket[] = [];
    const { up, pool } = await start((_h, _r, s) => waiting.push(s), { connections: 2 });
    const all = Promise.all([1, 2, 3, 4].map(() => pool.request({ method: 'GET', path: '/', headers: {}, body: null })));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(up.sockets.length, 2);
    assert.equal(waiting.length, 2);
    const release = setInterval(() => {
      for (const s of waiting.splice(0)) ok(s);
    }, 20);
    cleanup.push(() => clearInterval(release));
    const answers = await all;
    assert.equal(answers.length, 4);
    assert.equal(up.sockets.length, 2);
  });

  it('pauses the upstream while the body is not read, and resumes when it is', async () => {
    const big = 'x'.repeat(1024 * 1024);
    const { pool } = await start((_h, _r, s) => s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${big.length}\r\n\r\n${big}`));
    const a = await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(a.whole?.(), undefined, 'a megabyte is not held before it is read');
    assert.equal((await text(a)).length, big.length);
  });

  it('leaving a body unread closes its connection; the next request gets a new one', async () => {
    const { up, pool } = await start((_h, _r, s) => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'));
    const a = await pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    for await (const _ of a.body) break;
    await new Promise((r) => setTimeout(r, 20));
    const b = pool.request({ method: 'GET', path: '/', headers: {}, body: null });
    await b;
    assert.equal(up.sockets.length, 2);
  });

  it('reports a refused connection with the socket error code', async () => {
    const probe = await new Scripted(() => {}).start();
    probe.stop();
    const pool = new H1Pool(`http://127.0.0.1:${probe.port}`, opts);
    cleanup.push(() => pool.destroy());
    const e = await refusal(pool.request({ method: 'GET', path: '/', headers: {}, body: null }));
    assert.equal(e.code, 'ECONNREFUSED');
  });
});
