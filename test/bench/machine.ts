/**
 * What the host of this virtual machine took from it: "steal" in /proc/stat, the time its CPUs
 * wanted to run and the hypervisor ran something else. Measured here, it is the cause of most of
 * the run-to-run swings in the proxy rows (nginx's as much as ours): under load this machine's
 * steal moves between 0% and ~30% of its CPU time from one minute to the next, and a latency run
 * during which the host takes a tenth of the CPUs or more reads a p99 several times its quiet
 * value (nginx proxy_pass at 7,500 req/s: 3.4 ms at 1% steal, 25 ms at 11%).
 */
import { readFileSync } from 'node:fs';

interface CpuTimes {
  steal: number;
  total: number;
}

/** The machine's CPU time so far (all CPUs, in ticks), from the first line of /proc/stat. */
function cpuTimes(): CpuTimes {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user]
  return { steal: fields[7] ?? 0, total: fields.slice(0, 8).reduce((a, b) => a + b, 0) };
}

/** Runs `fn` and reports the share of the machine's CPU time stolen by its host meanwhile, in %. */
export async function withSteal<T>(fn: () => Promise<T>): Promise<{ value: T; steal: number }> {
  const before = cpuTimes();
  const value = await fn();
  const after = cpuTimes();
  const total = after.total - before.total;
  return { value, steal: total > 0 ? ((after.steal - before.steal) / total) * 100 : 0 };
}
