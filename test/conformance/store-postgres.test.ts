import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isPosternError } from '@postern/apis';
import { openStore, type SqlStore } from '@postern/store';
import { TestPostgres } from '../harness/index.js';
import { storeConformance } from './store-suite.js';

let server: TestPostgres | undefined;
const shared = async () => (server ??= await TestPostgres.create());

storeConformance('PostgreSQL', async () => {
  const pgSrv = await shared();
  const url = await pgSrv.createDatabase('conformance');
  let store: SqlStore = await openStore({ database: url });
  return {
    store,
    killConnections: async () => {
      await pgSrv.sql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'conformance' AND pid <> pg_backend_pid()`);
    },
    reopen: async () => {
      await store.close();
      store = await openStore({ database: url });
      return store;
    },
    cleanup: async () => {
      await store.close();
    },
  };
});

describe('store on PostgreSQL: server restart', () => {
  let store: SqlStore;
  before(async () => {
    const pgSrv = await shared();
    store = await openStore({ database: await pgSrv.createDatabase('restart') });
  });
  after(async () => {
    await store.close();
    await server?.destroy();
  });

  it('reports ERR_STORE_UNAVAILABLE while the server is down, then recovers with the watch intact', async () => {
    const pgSrv = await shared();
    const from = await store.currentVersion();
    const names: string[] = [];
    const watch = store.watch({ fromVersion: from, kinds: ['Group'] }, (ev) => void names.push(ev.resource.metadata.name));
    await store.create({ kind: 'Group', metadata: { name: 'before-restart' }, spec: {} });
    await pgSrv.stop();
    await assert.rejects(store.create({ kind: 'Group', metadata: { name: 'while-down' }, spec: {} }), (err) => isPosternError(err, 'ERR_STORE_UNAVAILABLE'));
    await pgSrv.start();
    let created = false;
    for (let i = 0; i < 100 && !created; i++) {
      try {
        await store.create({ kind: 'Group', metadata: { name: 'after-restart' }, spec: {} });
        created = true;
      } catch (err) {
        assert.ok(isPosternError(err, 'ERR_STORE_UNAVAILABLE'), String(err));
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    await watch.waitFor(await store.currentVersion());
    watch.close();
    assert.deepEqual(names, ['before-restart', 'after-restart']);
  });
});
