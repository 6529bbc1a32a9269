import { pino, type DestinationStream, type Logger } from 'pino';

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

/**
 * Writes access-log lines to the logger's own stream, in the logger's format (`level`, `time`,
 * its bindings, the entry, `msg`), serialised by one `JSON.stringify`.
 *
 * Why not `logger.info`: pino builds each line by concatenating ~40 pieces, and the stream then
 * has to flatten that string; together ~10% of the proxy's CPU at a line per request, measured,
 * against ~2% this way. The entry's fields are fixed and hold no secrets (no headers, no
 * tokens), so pino's redaction has nothing to do here. Loggers whose stream needs pino's
 * metadata (multistream, transports) get `logger.info` as before.
 */
export class AccessLog {
  private readonly stream: DestinationStream | undefined;
  /** The logger's bindings as JSON members, each after a comma (pino keeps them so). */
  private readonly bindings: string = '';
  private readonly level: number;

  constructor(private readonly logger: Logger) {
    const stream = (logger as unknown as Record<symbol, DestinationStream & Record<symbol, unknown>>)[pino.symbols.streamSym];
    const chindings = (logger as unknown as Record<symbol, unknown>)[pino.symbols.chindingsSym];
    this.level = logger.levels.values.info ?? 30;
    if (stream && typeof stream.write === 'function' && !stream[pino.symbols.needsMetadataGsym] && typeof chindings === 'string') {
      try {
        JSON.parse(`{${chindings.slice(1)}}`); // what pino keeps is valid JSON members, or this path is not taken
        this.bindings = chindings;
        this.stream = stream;
      } catch {
        this.stream = undefined;
      }
    }
  }

  write(e: AccessLogEntry): void {
    e.type = 'access';
    if (!this.stream) return void this.logger.info(e, 'request');
    if (!this.logger.isLevelEnabled('info')) return;
    // One stringify of the entry (a plain object: V8's fast path); the rest is fixed text.
    this.stream.write(`{"level":${this.level},"time":${Date.now()}${this.bindings},${JSON.stringify(e).slice(1, -1)},"msg":"request"}\n`);
  }
}
