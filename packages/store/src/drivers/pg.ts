import pg from 'pg';
import type { Queryable, SqlDriver } from './driver.js';

// int8 as string (versions exceed 2^53 only in theory, but never round them).
pg.types.setTypeParser(20, (v) => v);

export interface PgDriverOptions {
  connectionString: string;
  /** Pool size; default 10. */
  max?: number;
  /** Reconnect delays for the listening connection, in ms; default 100 doubling to 5000. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://(unparsable URL)';
  }
}

/** A driver over a real PostgreSQL server through a `pg` pool. */
export class PgDriver implements SqlDriver {
  readonly description: string;
  private readonly pool: pg.Pool;
  private closed = false;

  constructor(private readonly opts: PgDriverOptions) {
    this.description = redact(opts.connectionString);
    this.pool = new pg.Pool({ connectionString: opts.connectionString, max: opts.max ?? 10, connectionTimeoutMillis: 5000 });
    // An idle client whose server went away emits 'error' on the pool; without a handler that
    // would crash the process. The pool replaces the client on the next query.
    this.pool.on('error', () => {});
  }

  async query<T>(sql: string, params?: readonly unknown[]): Promise<T[]> {
    const res = await this.pool.query(sql, params as unknown[] | undefined);
    return res.rows as T[];
  }

  async exec(sql: string): Promise<void> {
    await this.pool.query(sql);
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken = false;
    // The pool listens for errors only on idle clients. A connection that dies while checked
    // out (killed, server restart) emits 'error' on the client: without this listener that
    // would be an uncaught exception. The pending query rejects on its own.
    const onError = () => {
      broken = true;
    };
    client.on('error', onError);
    try {
      await client.query('BEGIN');
      const tx: Queryable = {
        query: async <R>(sql: string, params?: readonly unknown[]) => (await client.query(sql, params as unknown[] | undefined)).rows as R[],
      };
      const out = await fn(tx);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true;
      }
      throw err;
    } finally {
      client.removeListener('error', onError);
      client.release(broken);
    }
  }

  async listen(channel: string, onNotify: () => void, onHealth: (healthy: boolean, err?: Error) => void): Promise<() => Promise<void>> {
    let client: pg.Client | undefined;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let delay = this.opts.minBackoffMs ?? 100;
    let healthy = false;
    const connect = async (): Promise<void> => {
      if (stopped || this.closed) return;
      const c = new pg.Client({ connectionString: this.opts.connectionString, connectionTimeoutMillis: 5000 });
      const fail = (err: Error) => {
        c.removeAllListeners();
        c.on('error', () => {});
        void c.end().catch(() => {});
        if (client === c) client = undefined;
        if (healthy) {
          healthy = false;
          onHealth(false, err);
        }
        if (!stopped && !this.closed) {
          timer = setTimeout(() => void connect(), delay);
          delay = Math.min(delay * 2, this.opts.maxBackoffMs ?? 5000);
        }
      };
      c.on('error', fail);
      c.on('end', () => fail(new Error('listening connection closed')));
      c.on('notification', (msg) => {
        if (msg.channel === channel) onNotify();
      });
      try {
        await c.connect();
        await c.query(`LISTEN "${channel.replace(/"/g, '')}"`);
        client = c;
        delay = this.opts.minBackoffMs ?? 100;
        healthy = true;
        // Anything committed while we were away is picked up by the watcher's catch-up on health.
        onHealth(true);
      } catch (err) {
        fail(err as Error);
      }
    };
    await connect();
    return async () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      const c = client;
      client = undefined;
      if (c) {
        c.removeAllListeners();
        c.on('error', () => {});
        await c.end().catch(() => {});
      }
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.pool.end();
  }
}
