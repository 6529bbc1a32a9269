import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { childPids } from './process.js';

/** Finds initdb/postgres: Debian's /usr/lib/postgresql/<newest>/bin, else PATH. */
function pgBinDir(): string {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'postgres'))).sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return join(root, versions[0], 'bin');
  }
  try {
    return execFileSync('sh', ['-c', 'dirname "$(command -v postgres)"'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql-15)');
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A free port below the kernel's ephemeral range (32768+), for a server that stops and starts
 * again on the same port: while it is down, no outgoing connection's source port and no
 * `listen(0)` elsewhere can take it.
 */
export async function stablePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port in 20000-29999');
}

/** PostgreSQL refuses to run as root: as root, run it as the `postgres` (or `nobody`) user. */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  for (const name of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
      return { uid, gid };
    } catch {
      // try the next one
    }
  }
  throw new Error('running as root and found neither a postgres nor a nobody user to run PostgreSQL as');
}

/**
 * A throwaway PostgreSQL server from the machine's binaries: initdb into a temp folder, a random
 * loopback port, removed by `destroy()`. `stop()`/`start()` restart it on the same data and port.
 */
export class TestPostgres {
  private proc: ChildProcess | undefined;
  private constructor(
    readonly dir: string,
    readonly port: number,
    private readonly bin: string,
    private readonly user: { uid: number; gid: number } | undefined,
    /** Run the server inside this network namespace (it is then reachable only from there). */
    readonly netns?: string,
    /** Also listen on this address, trusting clients from `allow` (other test hosts). */
    private readonly lan?: { address: string; allow: string },
  ) {}

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  /** The URL other hosts use (needs `lan`). */
  get lanUrl(): string {
    if (!this.lan) throw new Error('this test PostgreSQL listens on loopback only (create it with lan)');
    return `postgres://postgres@${this.lan.address}:${this.port}/postgres`;
  }

  static async create(opts: { netns?: string; lan?: { address: string; allow: string } } = {}): Promise<TestPostgres> {
    const bin = pgBinDir();
    const user = serverUser();
    const dir = mkdtempSync(join(tmpdir(), 'postern-pg-'));
    if (user) chownSync(dir, user.uid, user.gid);
    const data = join(dir, 'data');
    execFileSync(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--no-instructions'], {
      stdio: 'pipe',
      ...(user ?? {}),
    });
    if (opts.lan) appendFileSync(join(data, 'pg_hba.conf'), `host all all ${opts.lan.allow} trust\n`);
    const pgSrv = new TestPostgres(dir, await stablePort(), bin, user, opts.netns, opts.lan);
    await pgSrv.start();
    return pgSrv;
  }

  async start(): Promise<void> {
    const args = ['-D', join(this.dir, 'data'), '-p', String(this.port), '-k', this.dir, '-c', `listen_addresses=${['127.0.0.1', ...(this.lan ? [this.lan.address] : [])].join(',')}`, '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200'];
    // In a namespace: `ip netns exec` then `setpriv` (both exec, so the pid is the server's and
    // signals reach it directly).
    const proc = this.netns
      ? spawn('ip', ['netns', 'exec', this.netns, ...(this.user ? ['setpriv', `--reuid=${this.user.uid}`, `--regid=${this.user.gid}`, '--clear-groups', '--'] : []), join(this.bin, 'postgres'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] })
      : spawn(join(this.bin, 'postgres'), args, { stdio: ['ignore', 'ignore', 'pipe'], ...(this.user ?? {}) });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    this.proc = proc;
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`postgres exited with ${proc.exitCode}: ${stderr}`);
      if (this.netns) {
        const ready = spawnSync('ip', ['netns', 'exec', this.netns, join(this.bin, 'pg_isready'), '-q', '-h', '127.0.0.1', '-p', String(this.port)]);
        if (ready.status === 0) return;
        if (Date.now() > deadline) throw new Error(`postgres did not accept connections within 20 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const c = new pg.Client({ connectionString: this.url });
      try {
        await c.connect();
        await c.end();
        return;
      } catch {
        await c.end().catch(() => {});
        if (Date.now() > deadline) throw new Error(`postgres did not accept connections within 20 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Fast shutdown (SIGINT): connections are cut, data is kept. */
  async stop(): Promise<void> {
    const proc = this.proc;
    this.proc = undefined;
    if (!proc || proc.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      const kill = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      proc.kill('SIGINT');
    });
  }

  /**
   * A database host that hangs: the server and every backend stopped (SIGSTOP). Connections stay
   * open and nothing answers on them, unlike `stop()`, which closes them. `thaw()` resumes.
   */
  freeze(): void {
    this.signalAll('SIGSTOP');
  }

  thaw(): void {
    this.signalAll('SIGCONT');
  }

  /** The postmaster (from its pid file: in a namespace, `proc` is `ip netns exec`'s) and its children. */
  private signalAll(signal: NodeJS.Signals): void {
    const master = Number(readFileSync(join(this.dir, 'data', 'postmaster.pid'), 'utf8').split('\n', 1)[0]);
    for (const pid of [master, ...childPids(master)]) {
      try {
        process.kill(pid, signal);
      } catch (err) {
        // A backend that ended since it was listed (the server ends them as clients leave).
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    }
  }

  /** Runs one SQL statement as the superuser (to kill connections in tests). */
  async sql(text: string): Promise<unknown[]> {
    const c = new pg.Client({ connectionString: this.url });
    await c.connect();
    try {
      return (await c.query(text)).rows;
    } finally {
      await c.end();
    }
  }

  /** A fresh database on this server, so suites do not see each other's data. */
  async createDatabase(name: string): Promise<string> {
    await this.sql(`CREATE DATABASE "${name}"`);
    return `postgres://postgres@127.0.0.1:${this.port}/${name}`;
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
