import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it, before, after } from 'node:test';
import { isPosternError, type AnyResource } from '@postern/apis';
import type { ResourceStore, SqlStore, WatchEvent } from '@postern/store';

/** What each driver's test file hands the shared suite. */
export interface StoreUnderTest {
  store: ResourceStore;
  /** Cuts the store's database connections the hard way (the watch must resume by itself). */
  killConnections(): Promise<void>;
  /** Closes the store and opens a new one on the same data, as after a process restart. */
  reopen(): Promise<ResourceStore>;
  cleanup(): Promise<void>;
}

const svc = (name: string, labels?: Record<string, string>): AnyResource => ({
  kind: 'Service',
  metadata: { name, ...(labels ? { labels } : {}) },
  spec: { mode: 'HTTP', port: 80, config: { upstream: { url: 'http://127.0.0.1:1' } } },
});

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isPosternError(err), `expected a PosternError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

/** Collects watch events until `count` arrived or `ms` passed. */
function collect(store: ResourceStore, fromVersion: string | undefined, count: number, ms = 20_000, kinds?: string[]) {
  const events: WatchEvent[] = [];
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const timer = setTimeout(done, ms);
  const watch = store.watch({ ...(fromVersion !== undefined ? { fromVersion } : {}), ...(kinds ? { kinds } : {}) }, (ev) => {
    events.push(ev);
    if (events.length >= count) done();
  });
  return {
    events,
    watch,
    finished: finished.then(() => {
      clearTimeout(timer);
      watch.close();
      return events;
    }),
  };
}

/** The one store conformance suite, run against PGlite and a real PostgreSQL. */
export function storeConformance(name: string, make: () => Promise<StoreUnderTest>): void {
  describe(`store conformance: ${name}`, () => {
    let sut: StoreUnderTest;
    let store: ResourceStore;
    before(async () => {
      sut = await make();
      store = sut.store;
    });
    after(async () => {
      await sut.cleanup();
    });

    it('creates, gets and lists with server-set metadata', async () => {
      const created = await store.create(svc('crud-a', { team: 'a' }));
      assert.ok(created.metadata.uid);
      assert.ok(created.metadata.createdAt);
      assert.match(created.metadata.resourceVersion!, /^\d+$/);
      const got = await store.get('Service', 'crud-a');
      assert.deepEqual(got, created);
      assert.equal(await store.get('Service', 'nope'), undefined);
      await expectCode(store.create(svc('crud-a')), 'ERR_ALREADY_EXISTS');
    });

    it('lists with label selectors', async () => {
      await store.batch([
        { op: 'create', resource: svc('lbl-1', { env: 'prod', team: 'x' }) },
        { op: 'create', resource: svc('lbl-2', { env: 'dev', team: 'x' }) },
        { op: 'create', resource: svc('lbl-3', { env: 'prod' }) },
      ]);
      const names = async (sel: string) => (await store.list('Service', { labelSelector: sel })).items.map((r) => r.metadata.name).filter((n) => n.startsWith('lbl-')).sort();
      assert.deepEqual(await names('env=prod'), ['lbl-1', 'lbl-3']);
      assert.deepEqual(await names('env=prod,team'), ['lbl-1']);
      assert.deepEqual(await names('env in (dev, prod),!team'), ['lbl-3']);
      assert.deepEqual(await names('env!=prod,team=x'), ['lbl-2']);
      assert.deepEqual(await names('env notin (prod)'), ['lbl-2']);
      await expectCode(store.list('Service', { labelSelector: 'env=(' }), 'ERR_USAGE');
    });

    it('updates with optimistic concurrency, keeping uid and createdAt', async () => {
      const a = await store.create(svc('occ'));
      const b = await store.update({ ...a, spec: { ...a.spec, port: 81 } });
      assert.equal(b.metadata.uid, a.metadata.uid);
      assert.equal(b.metadata.createdAt, a.metadata.createdAt);
      assert.ok(BigInt(b.metadata.resourceVersion!) > BigInt(a.metadata.resourceVersion!));
      await expectCode(store.update({ ...a, spec: { ...a.spec, port: 82 } }), 'ERR_CONFLICT');
      await expectCode(store.update(svc('missing')), 'ERR_NOT_FOUND');
      await expectCode(store.delete('Service', 'occ', { ifVersion: a.metadata.resourceVersion! }), 'ERR_CONFLICT');
      const gone = await store.delete('Service', 'occ', { ifVersion: b.metadata.resourceVersion! });
      assert.equal(gone.spec?.port, 81);
      await expectCode(store.delete('Service', 'occ'), 'ERR_NOT_FOUND');
    });

    it('lets exactly one of many concurrent updates of the same version win', async () => {
      const base = await store.create(svc('race'));
      const attempts = Array.from({ length: 12 }, (_, i) => store.update({ ...base, spec: { ...base.spec, port: 1000 + i } }));
      const results = await Promise.allSettled(attempts);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      assert.equal(won.length, 1);
      assert.equal(lost.length, 11);
      for (const l of lost) assert.ok(isPosternError(l.reason, 'ERR_CONFLICT'), String(l.reason));
      const winner = (won[0] as PromiseFulfilledResult<AnyResource>).value;
      assert.equal((await store.get('Service', 'race'))!.spec!.port, winner.spec!.port);
    });

    it('applies a batch all or nothing', async () => {
      const before = await store.currentVersion();
      await expectCode(
        store.batch([
          { op: 'create', resource: svc('atomic-1') },
          { op: 'create', resource: svc('atomic-2') },
          { op: 'update', resource: svc('atomic-missing') },
        ]),
        'ERR_NOT_FOUND',
      );
      assert.equal(await store.get('Service', 'atomic-1'), undefined);
      assert.equal(await store.currentVersion(), before, 'a failed batch must not consume versions');
    });

    it('watches from a past version, in order, with every kind of event', async () => {
      const from = await store.currentVersion();
      const c = await store.create(svc('w-1'));
      await store.update({ ...c, spec: { ...c.spec, port: 8080 } });
      await store.delete('Service', 'w-1');
      await store.create({ kind: 'User', metadata: { name: 'w-user' }, spec: { type: 'HUMAN' } });
      const events = await collect(store, from, 3, 5000, ['Service']).finished;
      assert.deepEqual(events.map((e) => e.type), ['ADDED', 'MODIFIED', 'DELETED']);
      assert.equal(events[1]!.resource.spec!.port, 8080);
      const versions = events.map((e) => BigInt(e.version));
      assert.ok(versions.every((v, i) => i === 0 || v > versions[i - 1]!));
    });

    it('delivers 10,000 events from concurrent writers in order with none lost or repeated', async () => {
      const from = await store.currentVersion();
      const c = collect(store, from, 10_000, 120_000, ['Group']);
      const writers = Array.from({ length: 4 }, (_, w) =>
        (async () => {
          for (let b = 0; b < 25; b++) {
            await store.batch(Array.from({ length: 100 }, (_, i) => ({ op: 'create' as const, resource: { kind: 'Group', metadata: { name: `g-${w}-${b}-${i}` }, spec: {} } })));
          }
        })(),
      );
      await Promise.all(writers);
      const events = await c.finished;
      assert.equal(events.length, 10_000);
      assert.equal(new Set(events.map((e) => e.resource.metadata.name)).size, 10_000);
      for (let i = 1; i < events.length; i++) assert.equal(BigInt(events[i]!.version), BigInt(events[i - 1]!.version) + 1n);
    });

    it('resumes a watch after its database connections are killed', async () => {
      const from = await store.currentVersion();
      const c = collect(store, from, 3, 30_000, ['Region']);
      await store.create({ kind: 'Region', metadata: { name: 'r-before' }, spec: {} });
      await sut.killConnections();
      // Writes right after the kill may meet a dead pooled connection; the caller retries.
      for (const name of ['r-after-1', 'r-after-2']) {
        for (let i = 0; ; i++) {
          try {
            await store.create({ kind: 'Region', metadata: { name }, spec: {} });
            break;
          } catch (err) {
            assert.ok(isPosternError(err, 'ERR_STORE_UNAVAILABLE') && i < 50, String(err));
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
      const events = await c.finished;
      assert.deepEqual(events.map((e) => e.resource.metadata.name), ['r-before', 'r-after-1', 'r-after-2']);
    });

    it('catches up within about a second on a change whose notification never came', async () => {
      // As when another replica's NOTIFY is lost: the change is written straight into the tables.
      const from = await store.currentVersion();
      const c = collect(store, from, 1, 10_000, ['Region']);
      await new Promise((r) => setTimeout(r, 100)); // the watch is idle, waiting to be woken
      const started = Date.now();
      await (store as SqlStore).driver.transaction(async (tx) => {
        const [row] = await tx.query<{ v: string }>('UPDATE postern_version SET version = version + 1 WHERE id = 1 RETURNING version::text AS v');
        const body = { kind: 'Region', metadata: { name: 'r-silent', uid: randomUUID(), resourceVersion: row!.v }, spec: {} };
        await tx.query('INSERT INTO postern_resources (kind, name, uid, version, body) VALUES ($1, $2, $3, $4, $5::jsonb)', ['Region', 'r-silent', body.metadata.uid, row!.v, JSON.stringify(body)]);
        await tx.query('INSERT INTO postern_changes (version, kind, name, type, body) VALUES ($1, $2, $3, $4, $5::jsonb)', [row!.v, 'Region', 'r-silent', 'ADDED', JSON.stringify(body)]);
      });
      const events = await c.finished;
      assert.deepEqual(events.map((e) => e.resource.metadata.name), ['r-silent']);
      assert.ok(Date.now() - started < 2500, `seen after ${Date.now() - started} ms`);
    });

    it('resumes from the last seen version after a restart, losing and repeating nothing', async () => {
      await store.create({ kind: 'Device', metadata: { name: 'd-1' }, spec: {} });
      const seen = await store.currentVersion();
      await store.create({ kind: 'Device', metadata: { name: 'd-2' }, spec: {} });
      store = await sut.reopen();
      await store.create({ kind: 'Device', metadata: { name: 'd-3' }, spec: {} });
      const events = await collect(store, seen, 2, 10_000, ['Device']).finished;
      assert.deepEqual(events.map((e) => e.resource.metadata.name), ['d-2', 'd-3']);
      assert.ok(await store.get('Device', 'd-1'));
    });

    it('fails a watch from a compacted version with ERR_WATCH_EXPIRED', async () => {
      const old = await store.currentVersion();
      await store.create({ kind: 'Config', metadata: { name: 'c-1' }, spec: {} });
      await store.create({ kind: 'Config', metadata: { name: 'c-2' }, spec: {} });
      await store.compact(await store.currentVersion());
      const err = await new Promise<Error>((resolve) => {
        store.watch({ fromVersion: old, onError: resolve }, () => {});
      });
      assert.ok(isPosternError(err, 'ERR_WATCH_EXPIRED'));
      // A watch from the current version still works after compaction.
      const now = await store.currentVersion();
      const c = collect(store, now, 1, 5000);
      await store.create({ kind: 'Config', metadata: { name: 'c-3' }, spec: {} });
      assert.equal((await c.finished)[0]?.resource.metadata.name, 'c-3');
    });

    it('allocates addresses race-free: distinct under concurrency, stable per owner, reserved skipped, freed ones reused only after the range wraps', async () => {
      const range = { first: 1, last: 300, reserved: [53] };
      const owners = Array.from({ length: 120 }, (_, i) => `owner-${i}`);
      const offsets = await Promise.all(owners.map((o) => store.allocateAddress('test-pool', o, range)));
      assert.equal(new Set(offsets).size, owners.length, 'every owner got its own address');
      assert.ok(!offsets.includes(53));
      assert.ok(offsets.every((o) => o >= 1 && o <= 300));
      assert.equal(await store.allocateAddress('test-pool', 'owner-7', range), offsets[7], 'the same owner keeps its address');
      await store.releaseAddresses('owner-7');
      // The highest address handed out is given back too: it must not be the next one handed out.
      const top = Math.max(...offsets);
      await store.releaseAddresses(owners[offsets.indexOf(top)]!);
      assert.equal(await store.allocateAddress('test-pool', 'newcomer', range), top + 1, 'a freed address is not handed out again before the range wraps');
      assert.equal(await store.allocateAddress('test-pool', 'newcomer-2', range), top + 2, 'the cursor moves on from the last address handed out');
      const small = { first: 1, last: 4, reserved: [2] };
      assert.deepEqual([await store.allocateAddress('small', 'a', small), await store.allocateAddress('small', 'b', small), await store.allocateAddress('small', 'c', small)], [1, 3, 4], 'the reserved offset is skipped');
      await store.releaseAddresses('a');
      assert.equal(await store.allocateAddress('small', 'd', small), 1, 'after the top, the lowest freed address is reused');
      await expectCode(store.allocateAddress('small', 'e', small), 'ERR_IN_USE');
    });

    it('allocates addresses for many owners at once: the same next fit, beside single allocations and concurrent batches', async () => {
      const range = { first: 1, last: 3000, reserved: [53] };
      const one = await store.allocateAddress('batch-pool', 'single-0', range);
      const owners = Array.from({ length: 1200 }, (_, i) => `batch-${i}`);
      const got = await store.allocateAddresses('batch-pool', [...owners, 'single-0', 'batch-3'], range);
      assert.equal(got.size, 1201, 'one entry per owner, duplicates once');
      assert.equal(got.get('single-0'), one, 'an owner that holds an address keeps it');
      const offsets = owners.map((o) => got.get(o)!);
      assert.equal(new Set([...offsets, one]).size, 1201, 'every owner got its own address');
      assert.ok(!offsets.includes(53), 'the reserved offset is skipped');
      // Next fit: the batch continues after the single allocation, in order, skipping offset 53.
      assert.deepEqual(offsets.slice(0, 3), [one + 1, one + 2, one + 3]);
      assert.equal(Math.max(...offsets), one + 1201, 'the window reads past the first 1,024 offsets');
      assert.equal(await store.allocateAddress('batch-pool', 'after', range), one + 1202, 'the cursor moved to the last offset handed out');
      // Two batches at once (and a single allocation among them): no offset given twice.
      const a = Array.from({ length: 300 }, (_, i) => `race-a-${i}`);
      const b = Array.from({ length: 300 }, (_, i) => `race-b-${i}`);
      const [ga, gb, gs] = await Promise.all([
        store.allocateAddresses('batch-pool', a, range),
        store.allocateAddresses('batch-pool', b, range),
        store.allocateAddress('batch-pool', 'race-single', range),
      ]);
      const all = [...ga.values(), ...gb.values(), gs];
      assert.equal(all.length, 601);
      assert.equal(new Set(all).size, 601, 'concurrent batches never share an offset');
      // A pool too small for the batch: ERR_IN_USE naming the shortfall; what was free stays free.
      const small = { first: 1, last: 4, reserved: [2] };
      await store.allocateAddress('batch-small', 'x', small);
      await expectCode(store.allocateAddresses('batch-small', ['y', 'z', 'w'], small), 'ERR_IN_USE');
      assert.deepEqual([...(await store.allocateAddresses('batch-small', ['y', 'z'], small)).values()], [3, 4]);
      // Past the top, the lowest freed offsets are reused.
      await store.releaseAddresses('x');
      assert.deepEqual([...(await store.allocateAddresses('batch-small', ['v'], small)).values()], [1]);
    });

    it('keeps internal data apart from resources', async () => {
      assert.equal(await store.getInternal('k'), undefined);
      assert.deepEqual(await store.putInternal('k', { a: 1 }, { onlyIfAbsent: true }), { a: 1 });
      assert.deepEqual(await store.putInternal('k', { a: 2 }, { onlyIfAbsent: true }), { a: 1 });
      await store.putInternal('k', { a: 3 });
      assert.deepEqual(await store.getInternal('k'), { a: 3 });
    });
  });
}
