import type { AnyResource } from '@postern/apis';
import type { ResourceStore, Watch, WatchEvent } from './types.js';

export type CacheListener = (event: WatchEvent | { type: 'RESYNC' }) => void;

/**
 * An in-memory copy of some kinds, kept current by the store's watch: the request path reads
 * identities and policies from here, never from the database. After a compaction gap it lists
 * again and tells listeners with a RESYNC event.
 */
export class ResourceCache {
  private readonly byKind = new Map<string, Map<string, AnyResource>>();
  /** uid → name, per kind: tokens carry uids, which survive a rename-free delete and re-create. */
  private readonly byUid = new Map<string, Map<string, string>>();
  private readonly listeners = new Set<CacheListener>();
  private watch: Watch | undefined;
  private closed = false;
  private version = '0';

  /** Without a store, the cache is a replica fed by `load` and `apply` (a proxy worker process). */
  constructor(private readonly store: ResourceStore | undefined, readonly kinds: readonly string[], private readonly log: (msg: string, err?: Error) => void = () => {}) {
    for (const k of kinds) {
      this.byKind.set(k, new Map());
      this.byUid.set(k, new Map());
    }
  }

  /** Loads every resource of the kinds and follows changes from there. Resolves when loaded. */
  async start(): Promise<void> {
    if (!this.store) throw new Error('this cache is a replica: it is fed by load() and apply(), not by a store');
    const snap = await this.store.snapshot(this.kinds);
    this.fill(snap.items, snap.version);
    this.watch?.close();
    this.watch = this.store.watch(
      {
        fromVersion: snap.version,
        kinds: this.kinds,
        onError: (err) => {
          if (this.closed) return;
          this.log('cache watch lost its place; listing again', err);
          void this.restart();
        },
        onHealth: (healthy, err) => this.log(healthy ? 'cache watch recovered' : 'cache watch: database unreachable, retrying', err),
      },
      (ev) => this.apply(ev),
    );
  }

  private fill(items: readonly AnyResource[], version: string): void {
    for (const m of this.byKind.values()) m.clear();
    for (const m of this.byUid.values()) m.clear();
    for (const r of items) {
      this.byKind.get(r.kind)?.set(r.metadata.name, r);
      if (r.metadata.uid) this.byUid.get(r.kind)?.set(r.metadata.uid, r.metadata.name);
    }
    this.version = version;
  }

  /** Replaces the contents with `items` as of `version` (a replica's snapshot) and tells listeners (RESYNC). */
  load(items: readonly AnyResource[], version: string): void {
    this.fill(items, version);
    for (const l of this.listeners) l({ type: 'RESYNC' });
  }

  /** Everything the cache holds, and the version it reflects: what a replica starts from. */
  snapshot(): { items: AnyResource[]; version: string } {
    return { items: [...this.byKind.values()].flatMap((m) => [...m.values()]), version: this.version };
  }

  private async restart(): Promise<void> {
    for (let delay = 100; !this.closed; delay = Math.min(delay * 2, 5000)) {
      try {
        await this.start();
        for (const l of this.listeners) l({ type: 'RESYNC' });
        return;
      } catch (err) {
        this.log('cache relist failed; retrying', err as Error);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  /** Applies an event now (the writer calls this too, so its own reads see its write at once). */
  apply(ev: WatchEvent): void {
    const m = this.byKind.get(ev.resource.kind);
    if (!m) return;
    const have = m.get(ev.resource.metadata.name);
    // Events may arrive twice (written locally, then seen on the watch): keep the newest only.
    if (have && BigInt(have.metadata.resourceVersion ?? '0') >= BigInt(ev.version) && ev.type !== 'DELETED') return;
    const uids = this.byUid.get(ev.resource.kind)!;
    if (ev.type === 'DELETED') {
      if (have && BigInt(have.metadata.resourceVersion ?? '0') > BigInt(ev.version)) return;
      m.delete(ev.resource.metadata.name);
      if (ev.resource.metadata.uid) uids.delete(ev.resource.metadata.uid);
    } else {
      m.set(ev.resource.metadata.name, ev.resource);
      if (ev.resource.metadata.uid) uids.set(ev.resource.metadata.uid, ev.resource.metadata.name);
    }
    if (BigInt(ev.version) > BigInt(this.version)) this.version = ev.version;
    for (const l of this.listeners) l(ev);
  }

  get(kind: string, name: string): AnyResource | undefined {
    return this.byKind.get(kind)?.get(name);
  }

  getByUid(kind: string, uid: string): AnyResource | undefined {
    const name = this.byUid.get(kind)?.get(uid);
    return name === undefined ? undefined : this.get(kind, name);
  }

  list(kind: string): AnyResource[] {
    return [...(this.byKind.get(kind)?.values() ?? [])];
  }

  /** The newest version this cache reflects. */
  get currentVersion(): string {
    return this.version;
  }

  /** Resolves when the cache has seen every change up to `version`. */
  async waitFor(version: string): Promise<void> {
    await this.watch?.waitFor(version);
  }

  onChange(listener: CacheListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  close(): void {
    this.closed = true;
    this.watch?.close();
  }
}
