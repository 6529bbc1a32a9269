import { PgDriver } from './drivers/pg.js';
import { PgliteDriver } from './drivers/pglite.js';
import { SqlStore } from './sql-store.js';

export interface OpenStoreOptions {
  /** A `postgres://` URL: use that server. */
  database?: string;
  /** Otherwise the embedded PGlite database in this folder (undefined: in memory). */
  dataDir?: string;
  now?: () => Date;
}

/** Opens the store on PostgreSQL when a URL is given, else on embedded PGlite. */
export async function openStore(opts: OpenStoreOptions): Promise<SqlStore> {
  const driver = opts.database ? new PgDriver({ connectionString: opts.database }) : await PgliteDriver.open(opts.dataDir);
  try {
    return await SqlStore.open(driver, opts.now ? { now: opts.now } : {});
  } catch (err) {
    await driver.close().catch(() => {});
    throw err;
  }
}
