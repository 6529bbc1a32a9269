import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ipv4At, reservedOffsets, type AnyResource } from '@postern/apis';
import { openStore, ResourceCache, type ResourceStore, type SqlStore } from '@postern/store';
import { Controller, controllerCacheKinds } from '../src/index.js';

/** The Service's IPv4 address, once the controller has written it. */
const ipv4 = (s: AnyResource | undefined) => (s?.status as { addresses?: { dualStackIP: { ipv4: string } }[] } | undefined)?.addresses?.[0]?.dualStackIP.ipv4;

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); ) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('controller: Service addresses', () => {
  let store: SqlStore;
  let cache: ResourceCache;
  let controller: Controller;
  const logs: string[] = [];
  // The real store, with a switch that makes the next batch allocation fail (as a lost database
  // connection would) — the only thing this wrapper changes.
  let failNextAllocation = false;
  const flaky = new Proxy<ResourceStore>({} as ResourceStore, {
    get: (_t, key: keyof ResourceStore) => {
      if (key === 'allocateAddresses' && failNextAllocation) {
        failNextAllocation = false;
        return () => Promise.reject(new Error('connection lost'));
      }
      const v = store[key];
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(store) : v;
    },
  });

  before(async () => {
    store = await openStore({});
    cache = new ResourceCache(store, controllerCacheKinds);
    await cache.start();
    controller = new Controller({ store: flaky, cache, ipv6Prefix: 'fd00:1:2:3', log: (level, msg, f) => logs.push(`${level} ${msg} ${JSON.stringify(f ?? {})}`) });
    await controller.start();
  });

  after(async () => {
    await controller.close();
    cache.close();
    await store.close();
  });

  it('gives 450 Services created at once each its own address, in batches', async () => {
    await store.batch(Array.from({ length: 450 }, (_, i) => ({ op: 'create' as const, resource: { kind: 'Service', metadata: { name: `s-${i}` }, spec: {} } })));
    await until('450 addresses', () => cache.list('Service').filter((s) => ipv4(s)).length === 450);
    const ips = cache.list('Service').map(ipv4);
    assert.equal(new Set(ips).size, 450, 'no address given twice');
    assert.ok(ips.every((ip) => /^100\.64\.\d+\.\d+$/.test(ip!)));
    assert.equal(logs.filter((l) => l.startsWith('info service address assigned')).length, 450);
  });

  it('keeps a Service whose allocation failed pending, and gives it its address with the next change', async () => {
    failNextAllocation = true;
    await store.create({ kind: 'Service', metadata: { name: 'late' }, spec: {} });
    await until('the failure logged', () => logs.some((l) => l.includes('controller step failed') && l.includes('connection lost')));
    assert.equal(ipv4(cache.get('Service', 'late')), undefined);
    await store.create({ kind: 'Service', metadata: { name: 'later' }, spec: {} });
    await until('both addressed', () => !!ipv4(cache.get('Service', 'late')) && !!ipv4(cache.get('Service', 'later')));
    assert.notEqual(ipv4(cache.get('Service', 'late')), ipv4(cache.get('Service', 'later')));
  });

  it('keeps addresses across a restart of the controller, and frees a deleted Service\'s', async () => {
    const before = ipv4(cache.get('Service', 's-7'));
    await controller.close();
    controller = new Controller({ store: flaky, cache, ipv6Prefix: 'fd00:1:2:3' });
    await controller.start();
    assert.equal(ipv4(cache.get('Service', 's-7')), before, 'the start-up pass leaves an addressed Service as it is');
    const uid = cache.get('Service', 's-7')!.metadata.uid!;
    await store.delete('Service', 's-7');
    await until('the deletion seen', () => cache.get('Service', 's-7') === undefined);
    await controller.close(); // waits for its queue: the release included
    // Had the row stayed, the same owner would get the same offset back; freed, it gets a new one.
    const again = (await store.allocateAddresses('service', [uid], { first: 1, last: 65534, reserved: reservedOffsets.service })).get(uid)!;
    assert.notEqual(ipv4At('service', again), before);
    await store.releaseAddresses(uid);
    controller = new Controller({ store: flaky, cache, ipv6Prefix: 'fd00:1:2:3' });
    await controller.start();
  });
});
