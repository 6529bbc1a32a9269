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

const q = JSON.stringify;
const num = (n: number): string => (Number.isFinite(n) ? String(n) : 'null');
/** JSON of frozen objects: a decision's reason is one shared object per rule, serialised once. */
const frozenJson = new WeakMap<object, string>();

function json(v: unknown): string | undefined {
  if (typeof v === 'object' && v !== null && Object.isFrozen(v)) {
    let text = frozenJson.get(v);
    if (text === undefined) frozenJson.set(v, (text = q(v)));
    return text;
  }
  return q(v) as string | undefined;
}

/**
 * The entry's members as JSON, in a fixed order, leaving out undefined fields (as
 * `JSON.stringify` and pino do; a test compares the two). Written out field by field: one
 * `JSON.stringify` of the whole entry cost ~1.5 µs a line, this ~0.5 µs.
 */
export function accessLogMembers(e: AccessLogEntry): string {
  let out = `"type":"access","rid":${q(e.rid)},"method":${q(e.method)},"path":${q(e.path)},"status":${num(e.status)},"bytesIn":${num(e.bytesIn)},"bytesOut":${num(e.bytesOut)},"latencyMs":${num(e.latencyMs)}`;
  if (e.service !== undefined) out += `,"service":${q(e.service)}`;
  if (e.user !== undefined) out += `,"user":${q(e.user)}`;
  if (e.session !== undefined) out += `,"session":${q(e.session)}`;
  if (e.decision !== undefined) out += `,"decision":${q(e.decision)}`;
  const reason = e.reason === undefined ? undefined : json(e.reason);
  if (reason !== undefined) out += `,"reason":${reason}`;
  if (e.config !== undefined) out += `,"config":${q(e.config)}`;
  if (e.upstream !== undefined) out += `,"upstream":${q(e.upstream)}`;
  if (e.retries !== undefined) out += `,"retries":${num(e.retries)}`;
  if (e.error !== undefined) out += `,"error":${q(e.error)}`;
  return out;
}

/**
 * Writes access-log lines to the logger's own stream, in the logger's format (`level`, `time`,
 * its bindings, the entry, `msg`).
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
    if (!this.stream) return void this.logger.info({ type: 'access', ...e }, 'request');
    if (!this.logger.isLevelEnabled('info')) return;
    this.stream.write(`{"level":${this.level},"time":${Date.now()}${this.bindings},${accessLogMembers(e)},"msg":"request"}\n`);
  }
}
