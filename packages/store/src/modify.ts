import { isPosternError, type AnyResource } from '@postern/apis';
import type { ResourceStore } from './types.js';

/**
 * Read-modify-write of one resource, guarded by its resourceVersion and retried when someone
 * else wrote in between. `change` returns the new resource, or undefined to write nothing.
 * Resolves to what was written; undefined when the resource does not exist or nothing changed.
 */
export async function modifyResource(
  store: ResourceStore,
  kind: string,
  name: string,
  change: (current: AnyResource) => AnyResource | undefined | Promise<AnyResource | undefined>,
  attempts = 6,
): Promise<AnyResource | undefined> {
  for (let attempt = 1; ; attempt++) {
    const current = await store.get(kind, name);
    if (!current) return undefined;
    const next = await change(current);
    if (!next) return undefined;
    try {
      return await store.update(next, { ifVersion: current.metadata.resourceVersion! });
    } catch (err) {
      if (!isPosternError(err, 'ERR_CONFLICT') || attempt >= attempts) throw err;
    }
  }
}
