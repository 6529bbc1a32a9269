import type { Logger } from 'pino';

/** One line per request; the fields are a stable contract for log pipelines. */
export interface AccessLogEntry {
  type?: 'access';
  rid: string;
  service?: string | undefined;
  user?: string | undefined;
  session?: string | undefined;
  method: string;
  /** The normalised path (the raw target when it could not be normalised). */
  path: string;
  status: number;
  decision?: 'ALLOW' | 'DENY' | undefined;
  reason?: unknown;
  config?: string | undefined;
  upstream?: string | undefined;
  /** Retries made (`http.retry`), when any. */
  retries?: number | undefined;
  bytesIn: number;
  bytesOut: number;
  latencyMs: number;
  error?: string | undefined;
}

export function logAccess(log: Logger, e: AccessLogEntry): void {
  e.type = 'access';
  log.info(e, 'request');
}
