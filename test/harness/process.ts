import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const repo = join(import.meta.dirname, '../../..');
/** Path of an installed entry point (`cli/bin/<name>.js`). */
export const bin = (name: string) => join(repo, 'cli', 'bin', `${name}.js`);

/**
 * A process's children, as the kernel lists them: those of its main thread, which is where Node
 * and PostgreSQL start theirs. Throws when the process is gone.
 */
export function childPids(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}

export interface RunningPosternd {
  proc: ChildProcess;
  address: string;
  /** The public listener, when posternd has one. */
  publicAddress: string | undefined;
  rootToken: string | undefined;
  caFingerprint: string | undefined;
  stdout: string;
  /** The tail of what it logged. */
  logs(): string;
  stop(): Promise<number | null>;
}

/** Starts the real `posternd` binary and waits until it prints its banner. */
export async function spawnPosternd(
  args: string[],
  opts: {
    cwd: string;
    env?: NodeJS.ProcessEnv;
    timeoutMs?: number;
    netns?: string;
    /** Log to this file, as a deployment would, instead of to a pipe this process reads (benchmarks: reading costs CPU). */
    logFile?: string;
  },
): Promise<RunningPosternd> {
  const argv = [process.execPath, bin('posternd'), ...args];
  const logFd = opts.logFile ? openSync(opts.logFile, 'a') : undefined;
  const stdio: StdioOptions = ['ignore', 'pipe', logFd ?? 'pipe'];
  const proc = opts.netns
    ? spawn('ip', ['netns', 'exec', opts.netns, ...argv], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio })
    : spawn(argv[0]!, argv.slice(1), { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio });
  if (logFd !== undefined) closeSync(logFd);
  let stdout = '';
  let piped = '';
  /** What the harness itself saw (how the process ended), after the log's tail. */
  let notes = '';
  // Keep the tail only: a busy proxy logs a line per request.
  proc.stderr?.on('data', (d: Buffer) => (piped = (piped + d.toString()).slice(-65_536)));
  // The last 64 KiB of the log file, read from its end (a benchmark's log runs to gigabytes).
  const tail = () => {
    if (!opts.logFile) return piped;
    const fd = openSync(opts.logFile, 'r');
    try {
      const size = fstatSync(fd).size;
      const buf = Buffer.alloc(Math.min(size, 65_536));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      return buf.toString('utf8');
    } finally {
      closeSync(fd);
    }
  };
  const banner = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`posternd did not start within ${opts.timeoutMs ?? 30_000} ms:\n${tail()}`)), opts.timeoutMs ?? 30_000);
    const exited = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`posternd exited with ${code}:\n${tail()}`));
    };
    proc.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('Stop with Ctrl-C')) {
        clearTimeout(timer);
        // Once up, an exit is stop()'s business, not a failed start.
        proc.off('exit', exited);
        resolve(stdout);
      }
    });
    proc.once('exit', exited);
  });
  const address = banner.match(/API\s+(\S+)/)?.[1];
  if (!address) throw new Error(`no API address in banner:\n${banner}`);
  const token = banner.match(/Root auth token[^\n]*\n\s+(\S+)/)?.[1];
  const fp = banner.match(/cluster CA (SHA256:[0-9A-F:]+)/)?.[1];
  return {
    proc,
    address,
    publicAddress: banner.match(/served on (\S+)/)?.[1],
    rootToken: token,
    caFingerprint: fp,
    stdout,
    logs: () => tail() + notes,
    // posternd gives itself 20 s to stop; past 25 s it is killed, and its log says so.
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode);
        let killed = false;
        const kill = setTimeout(() => {
          killed = true;
          proc.kill('SIGKILL');
        }, 25_000);
        proc.once('exit', (code, signal) => {
          clearTimeout(kill);
          if (code === null) notes += `\n(test harness: posternd ended by ${signal}${killed ? ', sent 25 s after SIGTERM' : ''})\n`;
          resolve(code);
        });
        proc.kill('SIGTERM');
      }),
  };
}

/** Runs `postern` or `posternctl` as a real process. */
export function runBin(name: 'postern' | 'posternctl', args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; stdin?: string }): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [bin(name), ...args], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
    proc.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // A command that exits without reading its input closes the pipe: that is not the test's error.
    proc.stdin.on('error', () => {});
    proc.stdin.end(opts.stdin ?? '');
    proc.once('exit', (code) => resolve({ code, out, err }));
  });
}

/** A posternd of its own folder, logged in to as root (`startLoggedIn`). */
export interface LoggedInPosternd {
  dir: string;
  d: RunningPosternd;
  /** The public listener's port. */
  port: number;
  /** The cluster CA that `postern login` pinned. */
  ca: string;
  /** `posternctl` as root. */
  ctl(args: string[], stdin?: string): Promise<{ code: number | null; out: string; err: string }>;
  /** Stops posternd and removes the folder. */
  stop(): Promise<void>;
}

/**
 * `posternd up` in a fresh folder with its API and public listener on loopback (and `args`),
 * logged in to as root with the token it printed, as the README's first session does.
 */
export async function startLoggedIn(domain: string, args: string[] = []): Promise<LoggedInPosternd> {
  const dir = mkdtempSync(join(tmpdir(), `postern-${domain.split('.')[0]}-`));
  const as = { cwd: dir, env: { POSTERN_CONFIG_DIR: join(dir, 'home'), POSTERN_DOMAIN: '' } };
  let d: RunningPosternd | undefined;
  try {
    d = await spawnPosternd(['up', '--domain', domain, '--listen', '127.0.0.1:0', '--public-listen', '127.0.0.1:0', ...args], { cwd: dir });
    const login = await runBin('postern', ['login', '--domain', domain, '--api', d.address, '--auth-token', d.rootToken!], as);
    if (login.code !== 0) throw new Error(`postern login failed: ${login.err}`);
    const ca = (JSON.parse(readFileSync(join(dir, 'home', 'sessions', `${domain}.json`), 'utf8')) as { ca: string }).ca;
    const running = d;
    return {
      dir,
      d,
      port: Number(d.publicAddress!.split(':').at(-1)),
      ca,
      ctl: (a, stdin) => runBin('posternctl', ['--domain', domain, ...a], { ...as, ...(stdin !== undefined ? { stdin } : {}) }),
      stop: async () => {
        await running.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await d?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
