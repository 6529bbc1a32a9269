/**
 * `npm run bench [control-plane|proxy|tunnel]`: runs the benchmarks (all by default) and prints a
 * Markdown table for the README. Needs wrk and nginx for the proxy set, iperf3, wireguard-go and
 * root for the tunnel set (Debian: apt-get install wrk nginx iperf3 wireguard-go), and the
 * PostgreSQL server binaries for the control-plane set.
 */
import { controlPlaneBenchmarks, type BenchRow } from './control-plane.js';
import { proxyBenchmarks } from './proxy.js';
import { tunnelBenchmarks } from './tunnel.js';

const which = process.argv.slice(2);
const want = (name: string) => which.length === 0 || which.includes(name);
const rows: BenchRow[] = [];
if (want('control-plane')) rows.push(...(await controlPlaneBenchmarks()));
if (want('proxy')) rows.push(...(await proxyBenchmarks()));
if (want('tunnel')) rows.push(...(await tunnelBenchmarks()));
console.log('| benchmark | ours | reference | ratio | target | met |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.name} | ${r.ours} | ${r.reference} | ${r.ratio} | ${r.target} | ${r.pass === undefined ? '—' : r.pass ? 'yes' : '**no**'} |`);
