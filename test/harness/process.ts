import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';

const repo = join(import.meta.dirname, '../../..');
/** Path of an installed entry point (`cli/bin/<name>.js`). */
export const bin = (name: string) => join(repo, 'cli', 'bin', `${name}.js`);

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
    logs: tail,
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null) return resolve(proc.exitCode);
        const kill = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        proc.once('exit', (code) => {
          clearTimeout(kill);
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
