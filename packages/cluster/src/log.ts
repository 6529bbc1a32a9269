import { hostname } from 'node:os';
import { pino, type Logger } from 'pino';

/**
 * posternd's logger: JSON lines on stderr, buffered and asynchronous (the proxy logs a line per
 * request). Redaction names exact paths (wildcards cost on every line); no log call passes tokens
 * or headers, this is a second guard. `flush` writes what is buffered (call it before exiting).
 */
export function posterndLogger(bindings: Record<string, unknown> = {}): { logger: Logger; flush: () => void } {
  const destination = pino.destination({ dest: 2, sync: false, minLength: 4096 });
  const logger = pino(
    { name: 'posternd', level: process.env.POSTERN_LOG_LEVEL ?? 'info', base: { pid: process.pid, hostname: hostname(), ...bindings }, redact: { paths: ['token', 'accessToken', 'refreshToken', 'authorization', 'headers.authorization', 'err.config.headers'], censor: '[redacted]' } },
    destination,
  );
  return { logger, flush: () => destination.flushSync() };
}
