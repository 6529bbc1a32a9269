/**
 * @postern/store — the resource store on PostgreSQL: CRUD with `resourceVersion`, watch from any
 * version (a change log with a rising version; NOTIFY only wakes watchers), numbered migrations,
 * and two drivers: `pg` for a PostgreSQL server and PGlite for the embedded default.
 * Imports only @postern/apis; it never imports a server package.
 */
export type * from './types.js';
export type { Queryable, SqlDriver } from './drivers/driver.js';
export { PgDriver, type PgDriverOptions } from './drivers/pg.js';
export { PgliteDriver } from './drivers/pglite.js';
export { SqlStore, mapDbError } from './sql-store.js';
export { parseLabelSelector } from './labels.js';
export { migrations } from './migrations.js';
export { ResourceCache } from './cache.js';
export { openStore, type OpenStoreOptions } from './open.js';
export { modifyResource } from './modify.js';
