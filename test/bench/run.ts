/** `npm run bench`: runs the benchmarks and prints a Markdown table for the README. */
import { controlPlaneBenchmarks, type BenchRow } from './control-plane.js';

const rows: BenchRow[] = await controlPlaneBenchmarks();
console.log('| benchmark | ours | reference | ratio | target | met |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.name} | ${r.ours} | ${r.reference} | ${r.ratio} | ${r.target} | ${r.pass ? 'yes' : '**no**'} |`);
