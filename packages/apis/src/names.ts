import { dnsLabelPattern } from './meta.js';
import type { Issue } from './errors.js';
import { kindInfo, type Kind } from './kinds/index.js';

export const defaultNamespace = 'default';

/**
 * Problems with a resource name. Services are `svc` or `svc.ns` (each part a DNS label);
 * every other kind's name is one DNS label.
 */
export function nameIssues(kind: Kind, name: string): Issue[] {
  const parts = name.split('.');
  const namespaced = kindInfo[kind].namespaced;
  const bad = (message: string): Issue[] => [{ code: 'ERR_INVALID_NAME', path: 'metadata.name', message }];
  if (name.length === 0) return bad('name is empty');
  if (namespaced && parts.length > 2) return bad(`"${name}" has more than one dot: a ${kind} name is <name> or <name>.<namespace>`);
  if (!namespaced && parts.length > 1) return bad(`"${name}" has a dot: a ${kind} name is one DNS label (a-z, 0-9, '-')`);
  for (const part of parts) {
    if (part.length > 63) return bad(`"${part}" is ${part.length} characters long: each part of a name is at most 63`);
    if (!dnsLabelPattern.test(part)) {
      return bad(`"${name}" is not a valid name: use lower-case letters, digits and '-', starting and ending with a letter or digit`);
    }
  }
  return [];
}

/** The stored form of a name: Services always carry their namespace (`inventory` → `inventory.default`). */
export function canonicalName(kind: Kind, name: string): string {
  return kindInfo[kind].namespaced && !name.includes('.') ? `${name}.${defaultNamespace}` : name;
}

/** `svc.ns` → `{name: svc, namespace: ns}`; a name without a dot is in `default`. */
export function splitNamespaced(name: string): { name: string; namespace: string } {
  const dot = name.indexOf('.');
  return dot < 0 ? { name, namespace: defaultNamespace } : { name: name.slice(0, dot), namespace: name.slice(dot + 1) };
}

/** Levenshtein distance, for "did you mean" hints. */
export function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** The closest candidate to `word`, if it is close enough to be a likely typo. */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}
