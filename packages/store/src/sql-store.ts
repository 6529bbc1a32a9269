import { randomUUID } from 'node:crypto';
import { PosternError, type AnyResource } from '@postern/apis';
import type { Queryable, SqlDriver } from './drivers/driver.js';
import { parseLabelSelector } from './labels.js';
import { migrations } from './migrations.js';
import type {
  BatchOp,
  ListOptions,
  ListResult,
  ResourceStore,
  Watch,
  WatchEvent,
  WatchEventType,
  WatchOptions,
  WriteOptions,
} from './types.js';

const channel = 'postern_changes';
/** How often an idle watch looks for changes even without a NOTIFY (a lost wake-up costs at most this). */
const pollIntervalMs = 1000;
const pageSize = 1000;

const unavailableCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', '57P01', '57P02', '57P03', '53300']);

/** Turns driver errors into PosternErrors with stable codes; passes PosternErrors through. */
export function mapDbError(err: unknown): Error {
  if (err instanceof PosternError) return err;
  const e = err as { code?: string; message?: string };
  if (e.code === '23505') return new PosternError('ERR_ALREADY_EXISTS', 'a resource with that kind and name already exists');
  const msg = e.message ?? '';
  if (
    (e.code && (unavailableCodes.has(e.code) || e.code.startsWith('08'))) ||
    /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|Cannot use a pool after calling end|terminating connection/i.test(msg)
  ) {
    return new PosternError('ERR_STORE_UNAVAILABLE', `the database is unreachable (${msg || e.code}); retry shortly`);
  }
  return err instanceof Error ? err : new Error(String(err));
}

interface ChangeRow {
  version: string;
  type: WatchEventType;
  body: AnyResource;
}

function withVersion(r: AnyResource, version: string): AnyResource {
  return { ...r, metadata: { ...r.metadata, resourceVersion: version } };
}

/** The one ResourceStore implementation, over any SqlDriver (pg or PGlite). */
export class SqlStore implements ResourceStore {
  /** One per open watch: wakes it, and says whether it has yet to see `version`. */
  private readonly wakers = new Set<{ wake: () => void; behind: (version: bigint) => boolean }>();
  private polling = false;
  private unlisten: (() => Promise<void>) | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly healthListeners = new Set<(healthy: boolean, err?: Error) => void>();

  private constructor(readonly driver: SqlDriver, private readonly now: () => Date) {}

  /** Runs pending migrations and starts listening for changes. `now` is injectable for tests. */
  static async open(driver: SqlDriver, opts: { now?: () => Date } = {}): Promise<SqlStore> {
    const store = new SqlStore(driver, opts.now ?? (() => new Date()));
    await store.migrate();
    store.unlisten = await driver.listen(
      channel,
      () => store.wakeAll(),
      (healthy, err) => {
        for (const l of store.healthListeners) l(healthy, err);
        if (healthy) store.wakeAll();
      },
    );
    store.ticker = setInterval(() => void store.wakeBehind(), pollIntervalMs);
    store.ticker.unref();
    return store;
  }

  private async migrate(): Promise<void> {
    await this.driver.exec('CREATE TABLE IF NOT EXISTS postern_migrations (id int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())');
    await this.driver.transaction(async (tx) => {
      await tx.query(`SELECT pg_advisory_xact_lock(7423001)`);
      const done = new Set((await tx.query<{ id: number }>('SELECT id FROM postern_migrations')).map((r) => Number(r.id)));
      for (const m of migrations) {
        if (done.has(m.id)) continue;
        for (const stmt of m.sql.split(';').map((s) => s.trim()).filter(Boolean)) await tx.query(stmt);
        await tx.query('INSERT INTO postern_migrations (id, name) VALUES ($1, $2)', [m.id, m.name]);
      }
    });
  }

  private wakeAll(): void {
    for (const w of this.wakers) w.wake();
  }

  /**
   * The safety net behind NOTIFY, once a second: one small query for the current version, and
   * only the watches behind it are woken. (Waking every watch to query the change log cost the
   * embedded database, which runs on the event loop, 4–8 ms every second.)
   */
  private async wakeBehind(): Promise<void> {
    if (this.polling || this.wakers.size === 0) return;
    this.polling = true;
    try {
      const version = BigInt(await this.currentVersion());
      for (const w of this.wakers) if (w.behind(version)) w.wake();
    } catch {
      // Each watch finds out for itself and reports the database's health.
      this.wakeAll();
    } finally {
      this.polling = false;
    }
  }

  private async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new PosternError('ERR_STORE_UNAVAILABLE', 'the store is closed');
    try {
      return await fn();
    } catch (err) {
      throw mapDbError(err);
    }
  }

  async get(kind: string, name: string): Promise<AnyResource | undefined> {
    return this.run(async () => {
      const rows = await this.driver.query<{ version: string; body: AnyResource }>(
        'SELECT version::text AS version, body FROM postern_resources WHERE kind = $1 AND name = $2',
        [kind, name],
      );
      const row = rows[0];
      return row ? withVersion(row.body, row.version) : undefined;
    });
  }

  async list(kind: string, opts: ListOptions = {}): Promise<ListResult> {
    const matches = parseLabelSelector(opts.labelSelector);
    const snap = await this.snapshot([kind]);
    return { items: snap.items.filter((r) => matches(r.metadata.labels)), version: snap.version };
  }

  async snapshot(kinds: readonly string[]): Promise<ListResult> {
    return this.run(() =>
      this.driver.transaction(async (tx) => {
        await tx.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY');
        const [v] = await tx.query<{ version: string }>('SELECT version::text AS version FROM postern_version WHERE id = 1');
        const rows = await tx.query<{ version: string; body: AnyResource }>(
          'SELECT version::text AS version, body FROM postern_resources WHERE kind = ANY($1::text[]) ORDER BY kind, name',
          [kinds],
        );
        return { items: rows.map((r) => withVersion(r.body, r.version)), version: v!.version };
      }),
    );
  }

  async create(resource: AnyResource): Promise<AnyResource> {
    return (await this.batch([{ op: 'create', resource }]))[0]!;
  }

  async update(resource: AnyResource, opts: WriteOptions = {}): Promise<AnyResource> {
    return (await this.batch([{ op: 'update', resource, ...(opts.ifVersion !== undefined ? { ifVersion: opts.ifVersion } : {}) }]))[0]!;
  }

  async delete(kind: string, name: string, opts: WriteOptions = {}): Promise<AnyResource> {
    return (await this.batch([{ op: 'delete', kind, name, ...(opts.ifVersion !== undefined ? { ifVersion: opts.ifVersion } : {}) }]))[0]!;
  }

  async batch(ops: readonly BatchOp[]): Promise<AnyResource[]> {
    if (ops.length === 0) return [];
    const out = await this.run(() =>
      this.driver.transaction(async (tx) => {
        // Taking the counter row's lock serialises writers until commit, so versions become
        // visible in the order they were handed out and a watcher never skips one.
        const [row] = await tx.query<{ version: string }>(
          'UPDATE postern_version SET version = version + $1 WHERE id = 1 RETURNING version::text AS version',
          [ops.length],
        );
        let next = BigInt(row!.version) - BigInt(ops.length);
        const results: AnyResource[] = [];
        const at = this.now().toISOString();
        for (const op of ops) {
          next += 1n;
          results.push(await this.applyOp(tx, op, String(next), at));
        }
        await tx.query('SELECT pg_notify($1, $2)', [channel, String(next)]);
        return results;
      }),
    );
    this.wakeAll();
    return out;
  }

  private async applyOp(tx: Queryable, op: BatchOp, version: string, at: string): Promise<AnyResource> {
    const kind = op.op === 'delete' ? op.kind : op.resource.kind;
    const name = op.op === 'delete' ? op.name : op.resource.metadata.name;
    const change = async (type: WatchEventType, body: AnyResource) => {
      await tx.query('INSERT INTO postern_changes (version, kind, name, type, body) VALUES ($1, $2, $3, $4, $5::jsonb)', [
        version,
        kind,
        name,
        type,
        JSON.stringify(body),
      ]);
      return body;
    };
    if (op.op === 'create') {
      const { resourceVersion: _ignored, ...meta } = op.resource.metadata;
      const body: AnyResource = {
        ...op.resource,
        metadata: { ...meta, uid: randomUUID(), createdAt: at, updatedAt: at, resourceVersion: version },
      };
      const inserted = await tx.query(
        'INSERT INTO postern_resources (kind, name, uid, version, body) VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (kind, name) DO NOTHING RETURNING 1',
        [kind, name, body.metadata.uid, version, JSON.stringify(body)],
      );
      if (inserted.length === 0) throw new PosternError('ERR_ALREADY_EXISTS', `${kind} "${name}" already exists`);
      return change('ADDED', body);
    }
    const [current] = await tx.query<{ version: string; body: AnyResource }>(
      'SELECT version::text AS version, body FROM postern_resources WHERE kind = $1 AND name = $2',
      [kind, name],
    );
    if (!current) throw new PosternError('ERR_NOT_FOUND', `${kind} "${name}" not found`);
    const expected = op.ifVersion ?? (op.op === 'update' ? op.resource.metadata.resourceVersion : undefined);
    if (expected !== undefined && expected !== '' && expected !== current.version) {
      throw new PosternError(
        'ERR_CONFLICT',
        `${kind} "${name}" was changed by someone else (you had version ${expected}, it is now ${current.version}); get it again and retry`,
      );
    }
    if (op.op === 'delete') {
      await tx.query('DELETE FROM postern_resources WHERE kind = $1 AND name = $2', [kind, name]);
      return change('DELETED', withVersion(current.body, version));
    }
    const body: AnyResource = {
      ...op.resource,
      metadata: {
        ...op.resource.metadata,
        uid: current.body.metadata.uid,
        createdAt: current.body.metadata.createdAt,
        updatedAt: at,
        resourceVersion: version,
      },
    };
    await tx.query('UPDATE postern_resources SET version = $3, body = $4::jsonb WHERE kind = $1 AND name = $2', [
      kind,
      name,
      version,
      JSON.stringify(body),
    ]);
    return change('MODIFIED', body);
  }

  async currentVersion(): Promise<string> {
    return this.run(async () => {
      const [v] = await this.driver.query<{ version: string }>('SELECT version::text AS version FROM postern_version WHERE id = 1');
      return v!.version;
    });
  }

  async compact(version: string): Promise<void> {
    await this.run(() =>
      this.driver.transaction(async (tx) => {
        await tx.query('UPDATE postern_version SET compacted = GREATEST(compacted, LEAST($1::bigint, version)) WHERE id = 1', [version]);
        await tx.query('DELETE FROM postern_changes WHERE version <= (SELECT compacted FROM postern_version WHERE id = 1)');
      }),
    );
  }

  watch(opts: WatchOptions, onEvent: (event: WatchEvent) => void | Promise<void>): Watch {
    const kinds = opts.kinds ? new Set(opts.kinds) : undefined;
    let closed = false;
    let cursor: bigint | undefined = opts.fromVersion !== undefined && opts.fromVersion !== '' ? BigInt(opts.fromVersion) : undefined;
    let wake: (() => void) | undefined;
    let pending = false;
    const waiters: { version: bigint; resolve: () => void }[] = [];
    const waker = {
      wake: () => {
        pending = true;
        wake?.();
      },
      behind: (version: bigint) => cursor === undefined || cursor < version,
    };
    this.wakers.add(waker);
    let healthy = true;
    const settleWaiters = () => {
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (cursor !== undefined && waiters[i]!.version <= cursor) waiters.splice(i, 1)[0]!.resolve();
      }
    };
    const fail = (err: Error) => {
      closed = true;
      this.wakers.delete(waker);
      opts.onError?.(err);
    };
    const loop = async () => {
      let backoff = 50;
      while (!closed && !this.closed) {
        try {
          if (cursor === undefined) cursor = BigInt(await this.currentVersion());
          pending = false;
          const rows = await this.driver.query<ChangeRow & { compacted: string }>(
            `SELECT c.version::text AS version, c.type, c.body, v.compacted::text AS compacted
               FROM postern_version v LEFT JOIN LATERAL (
                 SELECT version, type, body FROM postern_changes WHERE version > $1 ORDER BY version LIMIT ${pageSize}
               ) c ON true WHERE v.id = 1`,
            [String(cursor)],
          );
          if (!healthy) {
            healthy = true;
            opts.onHealth?.(true);
          }
          backoff = 50;
          const compacted = BigInt(rows[0]?.compacted ?? '0');
          if (cursor < compacted) {
            fail(new PosternError('ERR_WATCH_EXPIRED', `changes up to version ${compacted} were compacted; cannot resume from ${cursor}: list again`));
            return;
          }
          const changes = rows.filter((r) => r.version !== null);
          for (const row of changes) {
            if (closed) return;
            const v = BigInt(row.version);
            if (v !== cursor + 1n) {
              fail(new PosternError('ERR_WATCH_EXPIRED', `change ${cursor + 1n} is gone from the change log (compacted); list again`));
              return;
            }
            if (!kinds || kinds.has(row.body.kind)) await onEvent({ type: row.type, resource: withVersion(row.body, row.version), version: row.version });
            cursor = v;
          }
          settleWaiters();
          if (changes.length === pageSize || pending) continue;
          await new Promise<void>((resolve) => {
            wake = resolve;
            if (pending || closed) resolve();
          });
          wake = undefined;
        } catch (err) {
          if (closed || this.closed) return;
          if (healthy) {
            healthy = false;
            opts.onHealth?.(false, mapDbError(err));
          }
          await new Promise((r) => setTimeout(r, backoff));
          backoff = Math.min(backoff * 2, 2000);
        }
      }
    };
    void loop();
    return {
      close: () => {
        closed = true;
        this.wakers.delete(waker);
        wake?.();
        for (const w of waiters.splice(0)) w.resolve();
      },
      waitFor: (version: string) => {
        const v = BigInt(version);
        if (cursor !== undefined && cursor >= v) return Promise.resolve();
        return new Promise<void>((resolve) => {
          waiters.push({ version: v, resolve });
          waker.wake();
        });
      },
    };
  }

  async allocateAddress(pool: string, owner: string, range: { first: number; last: number; reserved: readonly number[] }): Promise<number> {
    return this.run(async () => {
      for (let attempt = 0; attempt < 20; attempt++) {
        const [have] = await this.driver.query<{ o: number }>('SELECT address_offset AS o FROM postern_addresses WHERE pool = $1 AND owner = $2', [pool, owner]);
        if (have) return Number(have.o);
        if (attempt === 0) await this.reserve(pool, range.reserved);
        // Next fit: the lowest free offset after the last one handed out (the pool's cursor), so
        // an address given back is not handed to someone else until the range has wrapped — a
        // late packet or cached DNS answer for it cannot reach a new owner. Past the end of the
        // range, the lowest free offset from its start. Two allocators may pick the same offset:
        // the primary key lets one win, the other finds nothing inserted and tries again.
        const from = await this.searchFrom(pool, range);
        let got = await this.claimLowestFree(pool, owner, from, range.last);
        const wrapped = got === 'none' && from > range.first;
        if (wrapped) got = await this.claimLowestFree(pool, owner, range.first, range.last);
        if (got === 'lost') continue;
        if (got !== 'none') {
          await this.moveCursor(pool, got, wrapped);
          return got;
        }
        const [used] = await this.driver.query<{ n: number }>('SELECT count(*)::int AS n FROM postern_addresses WHERE pool = $1 AND address_offset BETWEEN $2 AND $3', [pool, range.first, range.last]);
        if (Number(used?.n) >= range.last - range.first + 1) throw new PosternError('ERR_IN_USE', `the ${pool} address pool is full`);
      }
      throw new PosternError('ERR_CONFLICT', `could not allocate a ${pool} address after 20 attempts; retry`);
    });
  }

  async allocateAddresses(pool: string, owners: readonly string[], range: { first: number; last: number; reserved: readonly number[] }): Promise<Map<string, number>> {
    return this.run(async () => {
      const got = new Map<string, number>();
      const wanted = [...new Set(owners)];
      await this.reserve(pool, range.reserved);
      for (let attempt = 0; attempt < 20; attempt++) {
        const held = await this.driver.query<{ owner: string; o: number }>(
          'SELECT owner, address_offset AS o FROM postern_addresses WHERE pool = $1 AND owner = ANY($2::text[])',
          [pool, wanted.filter((o) => !got.has(o))],
        );
        for (const h of held) got.set(h.owner, Number(h.o));
        const missing = wanted.filter((o) => !got.has(o));
        if (missing.length === 0) return got;
        // The same next fit as allocateAddress: free offsets from the one after the cursor, then
        // from the start of the range; found a window of offsets at a time (an index range scan).
        const from = await this.searchFrom(pool, range);
        const free = await this.freeOffsets(pool, from, range.last, missing.length);
        if (free.length < missing.length && from > range.first) free.push(...(await this.freeOffsets(pool, range.first, from - 1, missing.length - free.length)));
        if (free.length < missing.length) {
          throw new PosternError('ERR_IN_USE', `the ${pool} address pool is full: ${free.length} free, ${missing.length} needed`);
        }
        // Another allocator may take some of these first (or give one of these owners its
        // address): the primary key and the owner's uniqueness decide, the rest try again.
        const taken = await this.driver.query<{ owner: string; o: number }>(
          `INSERT INTO postern_addresses (pool, address_offset, owner) SELECT $1, o, w FROM unnest($2::int[], $3::text[]) AS t(o, w)
           ON CONFLICT DO NOTHING RETURNING owner, address_offset AS o`,
          [pool, free, missing],
        );
        for (const t of taken) got.set(t.owner, Number(t.o));
        if (taken.length) {
          const offsets = taken.map((t) => Number(t.o));
          const wrapped = offsets.filter((o) => o < from);
          const last = Math.max(...(wrapped.length ? wrapped : offsets));
          await this.moveCursor(pool, last, wrapped.length > 0);
        }
      }
      throw new PosternError('ERR_CONFLICT', `could not allocate ${pool} addresses after 20 attempts; retry`);
    });
  }

  /** Where the next-fit search starts: after the pool's cursor, or at the range's start. */
  private async searchFrom(pool: string, range: { first: number; last: number }): Promise<number> {
    const [cursor] = await this.driver.query<{ o: number }>('SELECT last_offset AS o FROM postern_address_cursors WHERE pool = $1', [pool]);
    const after = cursor ? Number(cursor.o) + 1 : range.first;
    return after >= range.first && after <= range.last ? after : range.first;
  }

  /** Reserved offsets are held by a placeholder owner, so no free-offset search hands them out. */
  private async reserve(pool: string, reserved: readonly number[]): Promise<void> {
    if (!reserved.length) return;
    await this.driver.query(
      `INSERT INTO postern_addresses (pool, address_offset, owner) SELECT $1, r, '(reserved:' || $1 || ':' || r || ')' FROM unnest($2::int[]) r ON CONFLICT DO NOTHING`,
      [pool, [...reserved]],
    );
  }

  /**
   * Records `last` as the offset last handed out. Concurrent allocators may finish out of order:
   * the cursor only moves forward, except after an allocation that wrapped around.
   */
  private async moveCursor(pool: string, last: number, wrapped: boolean): Promise<void> {
    await this.driver.query(
      `INSERT INTO postern_address_cursors (pool, last_offset) VALUES ($1, $2)
       ON CONFLICT (pool) DO UPDATE SET last_offset = CASE WHEN $3::boolean THEN EXCLUDED.last_offset
                                                            ELSE GREATEST(postern_address_cursors.last_offset, EXCLUDED.last_offset) END`,
      [pool, last, wrapped],
    );
  }

  /** Up to `n` free offsets in [first, last], lowest first, read a window of the range at a time. */
  private async freeOffsets(pool: string, first: number, last: number, n: number): Promise<number[]> {
    const free: number[] = [];
    const size = n + 1024;
    for (let start = first; start <= last && free.length < n; start += size) {
      const end = Math.min(last, start + size - 1);
      const used = await this.driver.query<{ o: number }>(
        'SELECT address_offset AS o FROM postern_addresses WHERE pool = $1 AND address_offset BETWEEN $2 AND $3',
        [pool, start, end],
      );
      const taken = new Set(used.map((u) => Number(u.o)));
      for (let o = start; o <= end && free.length < n; o++) if (!taken.has(o)) free.push(o);
    }
    return free;
  }

  /**
   * Tries to take the lowest free offset in [first, last] for owner: `first` itself, or the one
   * after an allocated offset whose successor is free (index lookups over the allocated rows, not a
   * scan of the range). 'none' when the span is full; 'lost' when a concurrent allocator took it.
   */
  private async claimLowestFree(pool: string, owner: string, first: number, last: number): Promise<number | 'none' | 'lost'> {
    const [row] = await this.driver.query<{ c: number | null; o: number | null }>(
      `WITH free AS (
         SELECT c FROM (
           SELECT $3::int AS c WHERE NOT EXISTS (SELECT 1 FROM postern_addresses WHERE pool = $1 AND address_offset = $3)
           UNION ALL
           SELECT a.address_offset + 1 FROM postern_addresses a
            WHERE a.pool = $1 AND a.address_offset >= $3 AND a.address_offset < $4
              AND NOT EXISTS (SELECT 1 FROM postern_addresses b WHERE b.pool = $1 AND b.address_offset = a.address_offset + 1)
         ) gaps WHERE c BETWEEN $3 AND $4 ORDER BY c LIMIT 1
       ), taken AS (
         INSERT INTO postern_addresses (pool, address_offset, owner) SELECT $1, c, $2 FROM free
         ON CONFLICT DO NOTHING RETURNING address_offset
       )
       SELECT (SELECT c FROM free) AS c, (SELECT address_offset FROM taken) AS o`,
      [pool, owner, first, last],
    );
    if (row?.o != null) return Number(row.o);
    return row?.c == null ? 'none' : 'lost';
  }

  async releaseAddresses(owner: string): Promise<void> {
    await this.run(() => this.driver.query('DELETE FROM postern_addresses WHERE owner = $1', [owner]));
  }

  async getInternal<T>(key: string): Promise<T | undefined> {
    return this.run(async () => {
      const [row] = await this.driver.query<{ value: T }>('SELECT value FROM postern_internal WHERE key = $1', [key]);
      return row?.value;
    });
  }

  async putInternal<T>(key: string, value: T, opts: { onlyIfAbsent?: boolean } = {}): Promise<T> {
    return this.run(async () => {
      if (opts.onlyIfAbsent) {
        await this.driver.query('INSERT INTO postern_internal (key, value) VALUES ($1, $2::jsonb) ON CONFLICT (key) DO NOTHING', [key, JSON.stringify(value)]);
        return (await this.getInternal<T>(key)) as T;
      }
      await this.driver.query(
        'INSERT INTO postern_internal (key, value) VALUES ($1, $2::jsonb) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()',
        [key, JSON.stringify(value)],
      );
      return value;
    });
  }

  /** Subscribes to the health of the change feed (the LISTEN connection). */
  onHealth(listener: (healthy: boolean, err?: Error) => void): () => void {
    this.healthListeners.add(listener);
    return () => this.healthListeners.delete(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ticker) clearInterval(this.ticker);
    this.wakeAll();
    this.wakers.clear();
    await this.unlisten?.().catch(() => {});
    await this.driver.close();
  }
}
