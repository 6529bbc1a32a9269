import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { bin } from './process.js';

/** Runs a command to completion in the host namespace; throws with its stderr on failure. */
export function sh(cmd: string, args: string[], opts: { allowFail?: boolean } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0 && !opts.allowFail) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr || r.error?.message}`);
  return r.stdout;
}

export interface Host {
  /** The namespace name. */
  ns: string;
  /** Address on the test LAN (or the upstream link). */
  ip: string;
}

/** The original /etc/resolv.conf each client namespace starts with (disconnect must restore it byte for byte). */
export const originalResolvConf = '# client resolver, set by the test topology\nnameserver 198.18.0.250\noptions timeout:1 attempts:1\n';

/**
 * Test hosts made of network namespaces (DESIGN.md §7): `gw` with a bridge as the LAN that
 * `client1` and `client2` plug into (198.18.0.0/24, a benchmarking range), and `upstream` on its
 * own link from gw (198.18.9.0/24). With `secondGateway`, a `gw2` host joins the LAN
 * (198.18.0.2) and reaches the upstream through gw, which forwards. Every namespace gets its own
 * resolv.conf. `destroy()` kills every process in the namespaces and deletes them, also after a failure.
 */
export class Topology {
  readonly gw: Host;
  readonly client1: Host;
  readonly client2: Host;
  readonly upstream: Host;
  readonly gw2: Host | undefined;
  private readonly procs = new Set<ChildProcess>();

  private constructor(readonly prefix: string, secondGateway: boolean) {
    this.gw = { ns: `${prefix}-gw`, ip: '198.18.0.1' };
    this.client1 = { ns: `${prefix}-c1`, ip: '198.18.0.11' };
    this.client2 = { ns: `${prefix}-c2`, ip: '198.18.0.12' };
    this.upstream = { ns: `${prefix}-up`, ip: '198.18.9.2' };
    this.gw2 = secondGateway ? { ns: `${prefix}-g2`, ip: '198.18.0.2' } : undefined;
  }

  private get hosts(): Host[] {
    return [this.gw, this.client1, this.client2, this.upstream, ...(this.gw2 ? [this.gw2] : [])];
  }

  static create(opts: { secondGateway?: boolean } = {}): Topology {
    const t = new Topology(`pt${randomBytes(2).toString('hex')}`, !!opts.secondGateway);
    try {
      t.build();
    } catch (err) {
      t.destroy();
      throw err;
    }
    return t;
  }

  private build(): void {
    const p = this.prefix;
    for (const h of this.hosts) {
      sh('ip', ['netns', 'add', h.ns]);
      sh('ip', ['-n', h.ns, 'link', 'set', 'lo', 'up']);
      mkdirSync(`/etc/netns/${h.ns}`, { recursive: true });
      writeFileSync(`/etc/netns/${h.ns}/resolv.conf`, originalResolvConf);
    }
    sh('ip', ['-n', this.gw.ns, 'link', 'add', 'br0', 'type', 'bridge']);
    sh('ip', ['-n', this.gw.ns, 'addr', 'add', `${this.gw.ip}/24`, 'dev', 'br0']);
    sh('ip', ['-n', this.gw.ns, 'link', 'set', 'br0', 'up']);
    for (const [i, c] of [this.client1, this.client2, ...(this.gw2 ? [this.gw2] : [])].entries()) {
      const a = `${p}c${i}a`;
      const b = `${p}c${i}b`;
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      sh('ip', ['link', 'set', a, 'netns', this.gw.ns]);
      sh('ip', ['link', 'set', b, 'netns', c.ns]);
      sh('ip', ['-n', this.gw.ns, 'link', 'set', a, 'master', 'br0', 'up']);
      sh('ip', ['-n', c.ns, 'link', 'set', b, 'name', 'eth0']);
      sh('ip', ['-n', c.ns, 'addr', 'add', `${c.ip}/24`, 'dev', 'eth0']);
      sh('ip', ['-n', c.ns, 'link', 'set', 'eth0', 'up']);
    }
    sh('ip', ['link', 'add', `${p}ua`, 'type', 'veth', 'peer', 'name', `${p}ub`]);
    sh('ip', ['link', 'set', `${p}ua`, 'netns', this.gw.ns]);
    sh('ip', ['link', 'set', `${p}ub`, 'netns', this.upstream.ns]);
    sh('ip', ['-n', this.gw.ns, 'addr', 'add', '198.18.9.1/24', 'dev', `${p}ua`]);
    sh('ip', ['-n', this.gw.ns, 'link', 'set', `${p}ua`, 'up']);
    sh('ip', ['-n', this.upstream.ns, 'link', 'set', `${p}ub`, 'name', 'eth0']);
    sh('ip', ['-n', this.upstream.ns, 'addr', 'add', `${this.upstream.ip}/24`, 'dev', 'eth0']);
    sh('ip', ['-n', this.upstream.ns, 'link', 'set', 'eth0', 'up']);
    if (this.gw2) {
      sh('ip', ['netns', 'exec', this.gw.ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      sh('ip', ['-n', this.gw2.ns, 'route', 'add', '198.18.9.0/24', 'via', this.gw.ip]);
      sh('ip', ['-n', this.upstream.ns, 'route', 'add', '198.18.0.0/24', 'via', '198.18.9.1']);
    }
  }

  /** Runs a command in a namespace to completion. */
  run(host: Host, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {}): Promise<{ code: number | null; out: string; err: string; ms: number }> {
    const started = performance.now();
    return new Promise((resolve) => {
      const proc = spawn('ip', ['netns', 'exec', host.ns, cmd, ...args], { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const timer = setTimeout(() => proc.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
      // A command that exits without reading its input closes the pipe: that is not the test's error.
      proc.stdin.on('error', () => {});
      proc.stdin.end(opts.input ?? '');
      proc.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, out, err, ms: performance.now() - started });
      });
    });
  }

  /** Runs the real `postern` or `posternctl` in a namespace, for `domain`, with its own config folder. */
  cli(host: Host, name: 'postern' | 'posternctl', configDir: string, domain: string, args: string[], opts: { input?: string; timeoutMs?: number } = {}) {
    return this.run(host, process.execPath, [bin(name), '--domain', domain, ...args], { env: { POSTERN_CONFIG_DIR: configDir }, ...opts });
  }

  /** Starts a long-running command in a namespace; it is killed by `destroy()` if still running. */
  start(host: Host, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): ChildProcess {
    const proc = spawn('ip', ['netns', 'exec', host.ns, cmd, ...args], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.procs.add(proc);
    proc.once('exit', () => this.procs.delete(proc));
    return proc;
  }

  destroy(): void {
    for (const proc of this.procs) proc.kill('SIGKILL');
    for (const h of this.hosts) {
      // Everything still running in the namespace (wireguard-go daemons, detached connects).
      const pids = sh('ip', ['netns', 'pids', h.ns], { allowFail: true }).split('\n').filter(Boolean);
      for (const pid of pids) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // already gone
        }
      }
      sh('ip', ['netns', 'del', h.ns], { allowFail: true });
      rmSync(`/etc/netns/${h.ns}`, { recursive: true, force: true });
    }
  }
}
