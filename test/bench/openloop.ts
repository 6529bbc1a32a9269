/**
 * An open-loop load generator: sends requests at a fixed rate whatever the answers, and measures
 * each latency from the moment the request was due (so a stall is not hidden by the client
 * slowing down — no coordinated omission). Runs as its own process:
 *   node openloop.js <url> <rate/s> <seconds> [headers-json]
 * and prints {"sent","total","ok","p50","p90","p99","max"}: the requests counted, every request
 * sent (the warm-up's too), those answered 200, and latencies in ms. The first 2 s at the same rate are a
 * warm-up and not counted (the generator opens its connections and compiles its own code then;
 * wrk2 likewise leaves out its calibration period), for ours and the reference alike.
 *
 * It speaks HTTP/1.1 on plain sockets, one request at a time per connection (up to 128), with
 * the request bytes built once: on a 2-core machine every microsecond the generator spends is
 * taken from what it measures. (An undici-based generator took ~24 µs of CPU per request; this
 * one a fraction of that.) Answers must carry Content-Length, as both targets' do.
 */
import { connect, type Socket } from 'node:net';

const [url, rateArg, secondsArg, headersArg] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const headers = headersArg ? (JSON.parse(headersArg) as Record<string, string>) : {};
const target = new URL(url!);
const warmup = 2;
const total = Math.round(rate * (seconds + warmup));
const counted = Math.round(rate * warmup);
const maxConnections = 128;
const host = Object.keys(headers).some((k) => k.toLowerCase() === 'host') ? '' : `Host: ${target.host}\r\n`;
const request = Buffer.from(`GET ${target.pathname}${target.search} HTTP/1.1\r\n${host}${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`, 'latin1');

const lat: number[] = [];
let ok = 0;
let sent = 0;
let settled = 0;
let allSettled: () => void = () => {};

/** One keep-alive connection and the request it carries (when it was due, whether it counts). */
interface Conn {
  socket: Socket;
  busy: boolean;
  due: number;
  measured: boolean;
  buf: Buffer | undefined;
}
const idle: Conn[] = [];
const queued: [number, boolean][] = [];
let open = 0;

function settle(due: number, measured: boolean, good: boolean): void {
  if (measured) {
    if (good) ok++;
    lat.push(performance.now() - due);
  }
  if (++settled === total) allSettled();
}

/** The next request for a free connection, or it waits idle. */
function next(conn: Conn): void {
  const q = queued.shift();
  if (q) send(conn, q[0], q[1]);
  else idle.push(conn);
}

function send(conn: Conn, due: number, measured: boolean): void {
  conn.busy = true;
  conn.due = due;
  conn.measured = measured;
  conn.socket.write(request);
}

function openConnection(due: number, measured: boolean): void {
  open++;
  const socket = connect(Number(target.port || 80), target.hostname);
  socket.setNoDelay(true);
  const conn: Conn = { socket, busy: false, due, measured, buf: undefined };
  socket.on('data', (d: Buffer) => {
    const buf = (conn.buf = conn.buf ? Buffer.concat([conn.buf, d]) : d);
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) return;
    const head = buf.toString('latin1', 0, end);
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
    if (Number.isNaN(length)) return void socket.destroy(); // counted as a failure below
    if (buf.length < end + 4 + length) return;
    conn.buf = undefined;
    conn.busy = false;
    settle(conn.due, conn.measured, head.startsWith('HTTP/1.1 200'));
    if (/\r\nconnection: *close/i.test(head)) socket.destroy();
    else next(conn);
  });
  socket.on('error', () => socket.destroy());
  // A connection that ends: its request (if any) failed; a queued one gets a new connection.
  socket.on('close', () => {
    open--;
    const i = idle.indexOf(conn);
    if (i >= 0) idle.splice(i, 1);
    if (conn.busy) settle(conn.due, conn.measured, false);
    const q = queued.shift();
    if (q) openConnection(q[0], q[1]);
  });
  send(conn, due, measured);
}

const start = performance.now();
await new Promise<void>((resolve) => {
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
    while (sent < due) {
      const scheduled = start + (sent / rate) * 1000;
      const measured = sent >= counted;
      sent++;
      const conn = idle.pop();
      if (conn) send(conn, scheduled, measured);
      else if (open < maxConnections) openConnection(scheduled, measured);
      else queued.push([scheduled, measured]);
    }
    // A 1 ms timer, not a spin: the generator must not take a core from what it measures (the
    // up-to-1 ms send delay counts in every latency, ours and the reference alike).
    if (sent >= total) resolve();
    else setTimeout(tick, 1);
  };
  tick();
});
// Every request is answered or the run fails by its timeout (the caller bounds it).
if (settled < total) await new Promise<void>((resolve) => (allSettled = resolve));
for (const c of idle) c.socket.destroy();
lat.sort((a, b) => a - b);
const pct = (p: number) => +(lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))] ?? NaN).toFixed(3);
console.log(JSON.stringify({ sent: sent - counted, total: sent, ok, p50: pct(50), p90: pct(90), p99: pct(99), max: +(lat.at(-1) ?? NaN).toFixed(3) }));
