/** What the SQL store needs from a PostgreSQL connection, so the same SQL runs on `pg` and PGlite. */
export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<T[]>;
}

export interface SqlDriver extends Queryable {
  /** Runs `fn` in one transaction; rolls back if it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Runs several statements separated by `;` (migrations). */
  exec(sql: string): Promise<void>;
  /**
   * Calls `onNotify` for each NOTIFY on `channel`, and `onHealth` when the listening connection
   * drops (false) or is back (true). Keeps reconnecting until the returned function is called.
   */
  listen(channel: string, onNotify: () => void, onHealth: (healthy: boolean, err?: Error) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
  /** Human-readable name for logs: `postgres://host:port/db` without the password, or `pglite:DIR`. */
  readonly description: string;
}
