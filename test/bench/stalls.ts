/**
 * How often this machine stops a running program: a busy loop in its own process reads the clock
 * as fast as it can for the given seconds and reports the gaps between two readings longer than
 * 1 ms — time it did not run (the hypervisor, interrupts, another thread on its core). Run before
 * any load, it is the floor under every tail latency measured here, ours and nginx's alike.
 *   node stalls.js <seconds>   prints {"seconds","over1ms","over5ms","longestMs","stalledMs"}
 */
const seconds = Number(process.argv[2] ?? 5);
const end = performance.now() + seconds * 1000;
let last = performance.now();
let over1 = 0;
let over5 = 0;
let longest = 0;
let stalled = 0;
for (;;) {
  const now = performance.now();
  const gap = now - last;
  last = now;
  if (now > end) break;
  if (gap > 1) {
    over1++;
    stalled += gap;
    if (gap > 5) over5++;
    if (gap > longest) longest = gap;
  }
}
console.log(JSON.stringify({ seconds, over1ms: over1, over5ms: over5, longestMs: +longest.toFixed(2), stalledMs: +stalled.toFixed(1) }));
