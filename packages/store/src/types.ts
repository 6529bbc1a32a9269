import type { AnyResource } from '@postern/apis';

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface WatchEvent {
  type: WatchEventType;
  /** The resource after the change; for DELETED, as it was when deleted. */
  resource: AnyResource;
  /** The store version of this change (equals `resource.metadata.resourceVersion`). */
  version: string;
}

export interface ListOptions {
  /** A label selector: `a=b,c!=d,e in (x,y),f notin (z),g,!h`. Empty selects everything. */
  labelSelector?: string;
}

export interface ListResult {
  items: AnyResource[];
  /** The store version the list reflects: watch from here to see every later change. */
  version: string;
}

export interface WriteOptions {
  /** Only write if the stored resource still has this resourceVersion (else ERR_CONFLICT). */
  ifVersion?: string;
}

export type BatchOp =
  | { op: 'create'; resource: AnyResource }
  | { op: 'update'; resource: AnyResource; ifVersion?: string }
  | { op: 'delete'; kind: string; name: string; ifVersion?: string };

export interface WatchOptions {
  /** Deliver changes after this version; undefined means from now on. */
  fromVersion?: string;
  /** Only these kinds; undefined means every kind. */
  kinds?: readonly string[];
  /** Called when the watch can go on no longer (its version was compacted away: list again). */
  onError?: (err: Error) => void;
  /** Called when the database becomes unreachable or reachable again; the watch keeps retrying by itself. */
  onHealth?: (healthy: boolean, err?: Error) => void;
}

export interface Watch {
  close(): void;
  /** Resolves once every change up to `version` has been handed to the callback. */
  waitFor(version: string): Promise<void>;
}

/**
 * The resource store: CRUD with optimistic concurrency on `resourceVersion`, and watch from any
 * version. Versions are one counter across every kind, rising by one per change, in commit order.
 * The store checks no schema: callers hand it validated resources.
 */
export interface ResourceStore {
  get(kind: string, name: string): Promise<AnyResource | undefined>;
  list(kind: string, opts?: ListOptions): Promise<ListResult>;
  /** Every resource of the given kinds at one version (for building caches). */
  snapshot(kinds: readonly string[]): Promise<ListResult>;
  /** Sets uid, createdAt, updatedAt and resourceVersion. ERR_ALREADY_EXISTS if the name is taken. */
  create(resource: AnyResource): Promise<AnyResource>;
  /** Replaces a resource, keeping uid and createdAt. ERR_NOT_FOUND, or ERR_CONFLICT on a stale version. */
  update(resource: AnyResource, opts?: WriteOptions): Promise<AnyResource>;
  delete(kind: string, name: string, opts?: WriteOptions): Promise<AnyResource>;
  /** Applies every operation in one transaction: all of them or none. */
  batch(ops: readonly BatchOp[]): Promise<AnyResource[]>;
  watch(opts: WatchOptions, onEvent: (event: WatchEvent) => void | Promise<void>): Watch;
  currentVersion(): Promise<string>;
  /** Drops change-log entries at or below `version`; watches from older versions then fail with ERR_WATCH_EXPIRED. */
  compact(version: string): Promise<void>;
  /**
   * The address offset `owner` holds in `pool`, allocating the lowest free one if it holds none.
   * Race-free across processes and replicas: the database's primary key decides. Offsets in
   * `reserved` are never handed out; ERR_IN_USE when the pool is full.
   */
  allocateAddress(pool: string, owner: string, range: { first: number; last: number; reserved: readonly number[] }): Promise<number>;
  /**
   * `allocateAddress` for many owners at once, in a few statements whatever their number: each
   * owner's offset, by owner. ERR_IN_USE when the pool cannot hold every owner still without one
   * (`allocateAddress`, one owner at a time, fills what is left).
   */
  allocateAddresses(pool: string, owners: readonly string[], range: { first: number; last: number; reserved: readonly number[] }): Promise<Map<string, number>>;
  /** Frees every address `owner` holds (all pools). */
  releaseAddresses(owner: string): Promise<void>;
  /** Internal key/value data that is not a resource (signing keys, cluster identity). Never served by the API. */
  getInternal<T>(key: string): Promise<T | undefined>;
  /** Writes internal data; with `onlyIfAbsent`, returns the value already there instead. */
  putInternal<T>(key: string, value: T, opts?: { onlyIfAbsent?: boolean }): Promise<T>;
  close(): Promise<void>;
}
