import { homedir } from 'node:os';

/** Where a command reads and writes; tests pass their own to run `main(argv)` in-process. */
export interface Io {
  out(text: string): void;
  err(text: string): void;
  env: NodeJS.ProcessEnv;
  cwd: string;
  home: string;
  readStdin(): Promise<string>;
  /** Whether stdout is a terminal (colour and progress only there). */
  isTTY: boolean;
}

export function processIo(): Io {
  // `posternctl get … | head` closes the pipe early: stop quietly, as other CLIs do.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  return {
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    env: process.env,
    cwd: process.cwd(),
    home: homedir(),
    isTTY: !!process.stdout.isTTY,
    readStdin: async () => {
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      return Buffer.concat(chunks).toString('utf8');
    },
  };
}
