import { Command, CommanderError } from 'commander';
import { PosternError } from '@postern/apis';
import type { Io } from './io.js';
import { reportError } from './output.js';

/** A commander program that writes to `io` and throws instead of exiting, so `main` runs in tests. */
export function program(name: string, description: string, io: Io): Command {
  const p = new Command(name).description(description).showHelpAfterError('(add --help for usage)');
  p.exitOverride();
  p.configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
  return p;
}

/** Runs a program to completion and returns the exit code: 0 on success, 1 on any error. */
export async function run(p: Command, argv: readonly string[], io: Io): Promise<number> {
  // Subcommands inherit output settings and exit override.
  const wire = (c: Command) => {
    c.exitOverride();
    c.configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
    c.commands.forEach(wire);
  };
  wire(p);
  try {
    await p.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.version' ? 0 : 1;
    }
    return reportError(io, err);
  }
}

export function notImplemented(what: string, issue: string): never {
  throw new PosternError('ERR_NOT_IMPLEMENTED', `${what} is not implemented yet (${issue})`);
}
