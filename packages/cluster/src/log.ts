import { hostname } from 'node:os';
import { pino, type Logger } from 'pino';

/**
 * posternd's logger: JSON lines on stderr, buffered and asynchronous (the proxy logs a line per
 * request). Redaction names exact paths (wildcards cost on every line); no log call passes tokens
 * or headers, this is a second guard. What is buffered is written at least once a second;
 * `flush` writes it now (call it before exiting).
 */
export function posterndLogger(bindings: Record<string, unknown> = {}): { logger: Logger; flush: () => void } {
  const destination = pino.destination({ dest: 2, sync: false, minLength: 4096 });
  const logger = pino(
    { name: 'posternd', level: process.env.POSTERN_LOG_LEVEL ?? 'info', base: { pid: process.pid, hostname: hostname(), ...bindings }, redact: { paths: ['token', 'accessToken', 'refreshToken', 'authorization', 'headers.authorization', 'err.config.headers'], censor: '[redacted]' } },
    destination,
  );
  // Buffered lines reach the log within a second even when traffic is light (`tail -f` works).
  const timer = setInterval(() => {
    try {
      destination.flush();
    } catch {
      // not open yet, or closing: the next tick or flushSync at exit writes it
    }
  }, 1000);
  timer.unref();
  return { logger, flush: () => destination.flushSync() };
}
