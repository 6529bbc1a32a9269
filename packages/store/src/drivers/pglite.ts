import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { PGlite } from '@electric-sql/pglite';
import type { Queryable, SqlDriver } from './driver.js';

/*
 * Each statement waits for a turn of the event loop (`yieldToEventLoop`). PGlite runs each statement
 * synchronously on this thread and resolves its promise without waiting for any I/O, so a chain
 * of statements (the controller giving 1,000 new Services their addresses, ~4 statements each)
 * ran back to back in microtasks and held off every socket for as long: measured, a proxied
 * request waited 8.2 s while 1,000 Services were applied. With a turn before each statement it
 * waits for one statement at most.
 */

/**
 * The embedded default: PostgreSQL compiled to WASM, in this process, persisted under a folder
 * (or in memory when none is given). One connection; LISTEN/NOTIFY works within this process only,
 * which is all a single-node cluster needs.
 */
export class PgliteDriver implements SqlDriver {
  readonly description: string;

  private constructor(private readonly db: PGlite, dataDir: string | undefined) {
    this.description = `pglite:${dataDir ?? 'memory'}`;
  }

  /** Opens (creating if needed) a database in `dataDir`; undefined means in memory. */
  static async open(dataDir?: string): Promise<PgliteDriver> {
    const db = dataDir ? new PGlite(dataDir) : new PGlite();
    await db.waitReady;
    return new PgliteDriver(db, dataDir);
  }

  async query<T>(sql: string, params?: readonly unknown[]): Promise<T[]> {
    await yieldToEventLoop();
    const res = await this.db.query<T>(sql, params as unknown[] | undefined);
    return res.rows;
  }

  async exec(sql: string): Promise<void> {
    await yieldToEventLoop();
    await this.db.exec(sql);
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    await yieldToEventLoop();
    return this.db.transaction(async (t) =>
      fn({
        query: async <R>(sql: string, params?: readonly unknown[]) => {
          await yieldToEventLoop();
          return (await t.query<R>(sql, params as unknown[] | undefined)).rows;
        },
      }),
    );
  }

  async listen(channel: string, onNotify: () => void, onHealth: (healthy: boolean) => void): Promise<() => Promise<void>> {
    const unlisten = await this.db.listen(channel, () => onNotify());
    onHealth(true);
    return unlisten;
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
