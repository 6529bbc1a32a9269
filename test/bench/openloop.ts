/**
 * An open-loop load generator: sends requests at a fixed rate whatever the answers, and measures
 * each latency from the moment the request was due (so a stall is not hidden by the client
 * slowing down — no coordinated omission). Runs as its own process:
 *   node openloop.js <url> <rate/s> <seconds> [headers-json]
 * and prints {"sent","ok","p50","p90","p99","max"} in ms. The first 2 s at the same rate are a
 * warm-up and not counted (the generator opens its connections and compiles its own code then;
 * wrk2 likewise leaves out its calibration period), for ours and the reference alike.
 */
import { Pool } from 'undici';

const [url, rateArg, secondsArg, headersArg] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const headers = headersArg ? (JSON.parse(headersArg) as Record<string, string>) : {};
const target = new URL(url!);
const pool = new Pool(target.origin, { connections: 128, pipelining: 1 });
const lat: number[] = [];
let ok = 0;
let sent = 0;
const warmup = 2;
const total = Math.round(rate * (seconds + warmup));
const counted = Math.round(rate * warmup);
const start = performance.now();
let settled = 0;
let allSettled: () => void = () => {};
const path = `${target.pathname}${target.search}`;

/**
 * One request through undici's dispatch interface: its `request()` wraps each answer in a
 * Readable stream, CPU the generator would take from what it measures on these 2 cores.
 */
function send(scheduled: number, measured: boolean): void {
  let status = 0;
  const done = (failed: boolean) => {
    if (measured) {
      if (!failed && status === 200) ok++;
      lat.push(performance.now() - scheduled);
    }
    if (++settled === total) allSettled();
  };
  pool.dispatch(
    { method: 'GET', path, headers },
    {
      onConnect() {},
      onHeaders(statusCode) {
        if (statusCode >= 200) status = statusCode;
        return true;
      },
      onData() {
        return true;
      },
      onComplete() {
        done(false);
      },
      onError() {
        done(true);
      },
    },
  );
}

await new Promise<void>((resolve) => {
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate));
    while (sent < due) {
      const scheduled = start + (sent / rate) * 1000;
      const measured = sent >= counted;
      sent++;
      send(scheduled, measured);
    }
    // A 1 ms timer, not a spin: the generator must not take a core from what it measures (the
    // up-to-1 ms send delay counts in every latency, ours and the reference alike).
    if (sent >= total) resolve();
    else setTimeout(tick, 1);
  };
  tick();
});
if (settled < total) await new Promise<void>((resolve) => (allSettled = resolve));
await pool.close();
lat.sort((a, b) => a - b);
const pct = (p: number) => +(lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))] ?? NaN).toFixed(3);
console.log(JSON.stringify({ sent: sent - counted, ok, p50: pct(50), p90: pct(90), p99: pct(99), max: +(lat.at(-1) ?? NaN).toFixed(3) }));
