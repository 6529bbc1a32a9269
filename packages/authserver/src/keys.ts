import type { ResourceStore } from '@postern/store';
import { generateKey, type StoredKey } from './tokens.js';

const keysKey = 'auth/signing-keys';

export interface KeyPolicy {
  /** A new signing key is made when the newest is older than this; default 30 days. */
  rotateAfterMs?: number;
  /** A retired key is kept for verification this long after the next one replaced it; default 90 days (longest token life). */
  keepAfterRetireMs?: number;
}

/**
 * Loads the signing keys, creating the first one or rotating when the newest is too old.
 * Safe to call from several replicas at once: the first key is created only if absent.
 */
export async function ensureSigningKeys(store: ResourceStore, now: Date, policy: KeyPolicy = {}): Promise<StoredKey[]> {
  const rotateAfter = policy.rotateAfterMs ?? 30 * 86_400_000;
  const keep = policy.keepAfterRetireMs ?? 90 * 86_400_000;
  let keys = await store.putInternal<StoredKey[]>(keysKey, [generateKey(now)], { onlyIfAbsent: true });
  const sorted = [...keys].sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  const newest = sorted.at(-1)!;
  if (now.getTime() - Date.parse(newest.createdAt) > rotateAfter) {
    const next = generateKey(now);
    // A key retires when its successor is made; drop those retired longer than `keep`.
    keys = [...sorted.filter((k, i) => {
      const successor = sorted[i + 1];
      return !successor || now.getTime() - Date.parse(successor.createdAt) < keep;
    }), next];
    await store.putInternal(keysKey, keys);
  }
  return keys;
}
