import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openStore, type SqlStore } from '@postern/store';
import { storeConformance } from './store-suite.js';

storeConformance('PGlite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'postern-pglite-'));
  let store: SqlStore = await openStore({ dataDir: dir });
  return {
    store,
    // PGlite runs in this process: there is no connection to cut, so the nearest thing is
    // closing and reopening the database under the watch's feet.
    killConnections: async () => {},
    reopen: async () => {
      await store.close();
      store = await openStore({ dataDir: dir });
      return store;
    },
    cleanup: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
