#!/usr/bin/env node
// Runs every compiled test file with node's own test runner. Test files are `*.test.js` under
// each workspace's dist folder; arguments narrow the run to files whose path contains them.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const roots = ['packages', 'cli', 'test'];
const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules') continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.test.js') && p.includes(`${join('dist')}`)) files.push(p);
  }
};
for (const r of roots) walk(r);
const filters = process.argv.slice(2);
const chosen = files.filter((f) => filters.length === 0 || filters.some((x) => f.includes(x))).sort();
if (chosen.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const res = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=120000', ...chosen], { stdio: 'inherit' });
process.exit(res.status ?? 1);
