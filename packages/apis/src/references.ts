import type { AnyResource, Kind } from './kinds/index.js';
import { splitNamespaced } from './names.js';
import type { PathSegment } from './validate.js';

/** A reference from one resource to another, with the field that holds it. */
export interface Reference {
  kind: Kind;
  name: string;
  segments: PathSegment[];
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Every `fromSecret` below a value, wherever it sits (auth, plugins, identity providers). */
function secretRefs(v: unknown, path: PathSegment[], out: Reference[]): void {
  if (Array.isArray(v)) v.forEach((x, i) => secretRefs(x, [...path, i], out));
  else if (isObj(v)) {
    for (const [k, x] of Object.entries(v)) {
      if (k === 'fromSecret' && typeof x === 'string') out.push({ kind: 'Secret', name: x, segments: [...path, k] });
      else secretRefs(x, [...path, k], out);
    }
  }
}

/**
 * The resources this one needs to exist: named Policies, Secrets, the Service's Namespace,
 * a User's Groups, a Credential's User.
 */
export function referencesOf(r: AnyResource): Reference[] {
  const out: Reference[] = [];
  const spec = (r.spec ?? {}) as Obj;
  const auth = spec.authorization as { policies?: string[] } | undefined;
  (auth?.policies ?? []).forEach((name, i) => out.push({ kind: 'Policy', name, segments: ['spec', 'authorization', 'policies', i] }));
  secretRefs(spec, ['spec'], out);
  if (r.kind === 'Service') out.push({ kind: 'Namespace', name: splitNamespaced(r.metadata.name).namespace, segments: ['metadata', 'name'] });
  if (r.kind === 'User') ((spec.groups as string[] | undefined) ?? []).forEach((name, i) => out.push({ kind: 'Group', name, segments: ['spec', 'groups', i] }));
  if (r.kind === 'Credential' && typeof spec.user === 'string') out.push({ kind: 'User', name: spec.user, segments: ['spec', 'user'] });
  return out;
}
