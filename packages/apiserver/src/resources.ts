import { setImmediate } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import {
  PosternError,
  canonicalName,
  formatPath,
  unsupportedFeatures,
  isKind,
  isSystemKind,
  kindInfo,
  kinds,
  referencesOf,
  validateResource,
  type AnyResource,
  type Issue,
  type Kind,
  type PathSegment,
} from '@postern/apis';
import { celIssues } from '@postern/policy';
import { parseLabelSelector, type BatchOp, type ResourceCache, type ResourceStore } from '@postern/store';

/** Resources `posternd init` made; `apply --prune` never removes them. */
export const systemAnnotation = 'postern.io/managed-by';

export type ApplyAction = 'created' | 'configured' | 'unchanged' | 'pruned';
export interface ApplyResult {
  kind: string;
  name: string;
  action: ApplyAction;
}

/** Asks policy whether the caller may do `method` on a resource; throws ERR_PERMISSION_DENIED if not. */
export type Authorize = (method: string, kind: string, name: string) => void;

export function requireKind(kind: string): Kind {
  if (!isKind(kind)) throw new PosternError('ERR_UNKNOWN_KIND', `unknown kind "${kind}" (one of ${kinds.join(', ')})`);
  return kind;
}

/** A resource as the API shows it: fields in the usual order, and a Secret's value never part of it. */
export function sanitize(r: AnyResource): AnyResource {
  let spec = r.spec;
  if (r.kind === 'Secret') {
    const { data: _hidden, ...rest } = (r.spec ?? {}) as { data?: unknown };
    spec = rest;
  }
  const { apiVersion, kind, metadata, spec: _spec, status, ...others } = r;
  return { apiVersion: apiVersion ?? 'core/v1', kind, metadata, ...(spec ? { spec } : {}), ...(status ? { status } : {}), ...others };
}

/** Fields a writer controls; everything else (uid, versions, status) is the server's. */
function desiredState(r: AnyResource) {
  const m = r.metadata;
  return JSON.parse(JSON.stringify({ spec: r.spec ?? {}, labels: m.labels ?? {}, annotations: m.annotations ?? {}, displayName: m.displayName, description: m.description })) as unknown;
}

interface Prepared {
  resource: AnyResource;
  issues: Issue[];
}

/**
 * The resource rules of the Core API, apart from the transport: validation (schema, names, CEL),
 * references, Secret hiding, atomic apply with prune. Every write goes to the store in one batch.
 */
export class ResourceService {
  /** The newest version this service wrote: reads from the cache wait until it holds it. */
  private lastWrite = 0n;

  /**
   * With a cache, `get` and `list` of the kinds it holds are served from memory, like the
   * Kubernetes watch cache: consistent with every write made through this service, and at most
   * the watch latency behind writes made by other replicas.
   */
  constructor(private readonly store: ResourceStore, private readonly cache?: ResourceCache) {}

  private wrote<T extends AnyResource | AnyResource[]>(result: T): T {
    for (const r of Array.isArray(result) ? result : [result]) {
      const v = BigInt(r.metadata.resourceVersion ?? '0');
      if (v > this.lastWrite) this.lastWrite = v;
    }
    return result;
  }

  private async cached(kind: Kind): Promise<ResourceCache | undefined> {
    if (!this.cache?.kinds.includes(kind)) return undefined;
    await this.cache.waitFor(String(this.lastWrite));
    return this.cache;
  }

  /** Validates a resource for writing: schema, name, CEL. Issues carry `document` when `index` is given. */
  prepare(input: unknown, index?: number): Prepared {
    const withDoc = <T extends Issue>(i: T): Issue => ({ code: i.code, message: i.message, ...(i.path !== undefined ? { path: i.path } : {}), ...(index !== undefined ? { document: index } : {}), ...('segments' in i ? { segments: (i as { segments: unknown }).segments } : {}) }) as Issue;
    const result = validateResource(input);
    if (!result.resource) return { resource: input as AnyResource, issues: result.issues.map(withDoc) };
    const r = result.resource;
    const issues: Issue[] = celIssues(r).map(withDoc);
    if (isSystemKind(r.kind as Kind)) {
      issues.push(withDoc({ code: 'ERR_READ_ONLY_KIND', message: `${r.kind} resources are created by Postern itself (log in or connect to make one)`, path: 'kind' }));
    }
    issues.push(...unsupportedFeatures(r).map(withDoc));
    if (r.kind === 'Credential') {
      issues.push(withDoc({ code: 'ERR_READ_ONLY_KIND', message: 'Credentials carry a token shown once: make them with `posternctl create credential`', path: 'kind' }));
    }
    return { resource: r, issues };
  }

  private async missingReferences(resources: readonly { r: AnyResource; index?: number }[], willExist: (kind: string, name: string) => boolean | undefined): Promise<Issue[]> {
    const issues: Issue[] = [];
    // Each target is read at most once: 1,000 Services in one Namespace are one read, not 1,000.
    const stored = new Map<string, Promise<boolean>>();
    const inStore = (kind: string, name: string) => {
      const key = `${kind}/${name}`;
      let p = stored.get(key);
      if (!p) stored.set(key, (p = this.store.get(kind, name).then((r) => r !== undefined)));
      return p;
    };
    for (const { r, index } of resources) {
      for (const ref of referencesOf(r)) {
        const known = willExist(ref.kind, ref.name);
        const exists = known ?? (await inStore(ref.kind, ref.name));
        if (!exists) {
          issues.push({
            code: 'ERR_MISSING_REFERENCE',
            message: `${ref.kind} "${ref.name}" does not exist; create it first or apply it in the same run`,
            path: formatPath(ref.segments),
            ...(index !== undefined ? { document: index } : {}),
            segments: ref.segments,
          } as Issue);
        }
      }
    }
    return issues;
  }

  async get(kind: string, name: string): Promise<AnyResource> {
    const k = requireKind(kind);
    const cache = await this.cached(k);
    const r = cache ? cache.get(k, canonicalName(k, name)) : await this.store.get(k, canonicalName(k, name));
    if (!r) throw new PosternError('ERR_NOT_FOUND', `${k} "${name}" not found`);
    return r;
  }

  async list(kind: string, labelSelector?: string, namespace?: string): Promise<{ items: AnyResource[]; version: string }> {
    const k = requireKind(kind);
    const cache = await this.cached(k);
    let res: { items: AnyResource[]; version: string };
    if (cache) {
      const matches = parseLabelSelector(labelSelector);
      const items = cache.list(k).filter((r) => matches(r.metadata.labels)).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      res = { items, version: cache.currentVersion };
    } else res = await this.store.list(k, labelSelector ? { labelSelector } : {});
    const items = namespace && kindInfo[k].namespaced ? res.items.filter((r) => r.metadata.name.endsWith(`.${namespace}`)) : res.items;
    return { items, version: res.version };
  }

  async create(input: unknown, dryRun = false): Promise<AnyResource> {
    const { resource, issues } = this.prepare(input);
    if (issues.length) throw PosternError.fromIssues(issues);
    const refs = await this.missingReferences([{ r: resource }], () => undefined);
    if (refs.length) throw PosternError.fromIssues(refs);
    if (dryRun) {
      if (await this.store.get(resource.kind, resource.metadata.name)) throw new PosternError('ERR_ALREADY_EXISTS', `${resource.kind} "${resource.metadata.name}" already exists`);
      return resource;
    }
    const { status: _ignored, ...clean } = resource;
    return this.wrote(await this.store.create(clean));
  }

  async update(input: unknown, dryRun = false): Promise<AnyResource> {
    const { resource, issues } = this.prepare(input);
    if (issues.length) throw PosternError.fromIssues(issues);
    const refs = await this.missingReferences([{ r: resource }], () => undefined);
    if (refs.length) throw PosternError.fromIssues(refs);
    // Read the stored copy, not the cache: the merge keeps its status, and the write is guarded
    // by its version, so a change by someone else in between is a conflict, never lost.
    const current = await this.store.get(resource.kind, resource.metadata.name);
    if (!current) throw new PosternError('ERR_NOT_FOUND', `${resource.kind} "${resource.metadata.name}" not found`);
    const next = this.merged(current, resource);
    if (dryRun) return next;
    return this.wrote(await this.store.update(next, { ifVersion: resource.metadata.resourceVersion || current.metadata.resourceVersion! }));
  }

  /** The stored resource with the writer's fields replaced; status and a Secret's value (if not given) kept. */
  private merged(current: AnyResource, desired: AnyResource): AnyResource {
    let spec = desired.spec;
    if (desired.kind === 'Secret' && !(desired.spec as { data?: unknown } | undefined)?.data) {
      spec = { ...desired.spec, data: (current.spec as { data?: unknown } | undefined)?.data };
    }
    const { resourceVersion: _rv, ...meta } = desired.metadata;
    return { ...current, ...(desired.apiVersion ? { apiVersion: desired.apiVersion } : {}), metadata: { ...current.metadata, ...meta, name: current.metadata.name }, spec: spec ?? {} };
  }

  /**
   * Who refers to each of `targets` (as `Kind/name` keys): `Kind/name` of every referrer. One
   * snapshot of the kinds that can refer to them, read once however many targets there are
   * (`apply --prune` of 2,000 resources used to read one snapshot per resource: 23 s).
   */
  private async referrers(targets: readonly AnyResource[]): Promise<Map<string, string[]>> {
    const kindsThatRefer: Record<string, Kind[]> = {
      Policy: ['Service', 'Namespace', 'User', 'Group', 'Session', 'Device', 'Credential', 'ClusterConfig'],
      Secret: ['Service', 'IdentityProvider'],
      Namespace: ['Service'],
      Group: ['User'],
    };
    const wanted = new Set(targets.map((t) => `${t.kind}/${t.metadata.name}`));
    const candidates = [...new Set(targets.flatMap((t) => kindsThatRefer[t.kind] ?? []))];
    const out = new Map<string, string[]>();
    if (candidates.length === 0) return out;
    for (const r of (await this.store.snapshot(candidates)).items) {
      const by = `${r.kind}/${r.metadata.name}`;
      for (const ref of referencesOf(r)) {
        const key = `${ref.kind}/${ref.name}`;
        if (!wanted.has(key)) continue;
        const list = out.get(key);
        if (!list) out.set(key, [by]);
        else if (!list.includes(by)) list.push(by);
      }
    }
    return out;
  }

  /** Deletes a resource; deleting a User or Credential also ends the sessions (and credentials) that hang on it. */
  async delete(kind: string, name: string, resourceVersion?: string): Promise<AnyResource> {
    const current = await this.get(kind, name);
    const using = (await this.referrers([current])).get(`${current.kind}/${current.metadata.name}`) ?? [];
    if (using.length) {
      throw new PosternError('ERR_IN_USE', `${current.kind} "${current.metadata.name}" is still used by ${using.slice(0, 5).join(', ')}${using.length > 5 ? ` and ${using.length - 5} more` : ''}; change those first`);
    }
    const ops: BatchOp[] = [];
    if (current.kind === 'User' || current.kind === 'Credential') {
      const deps = await this.store.snapshot(current.kind === 'User' ? ['Session', 'Credential'] : ['Session']);
      for (const d of deps.items) {
        const st = (d.status ?? {}) as { userRef?: { uid?: string }; credentialRef?: { uid?: string } };
        const spec = (d.spec ?? {}) as { user?: string };
        const hangs = current.kind === 'User'
          ? st.userRef?.uid === current.metadata.uid || (d.kind === 'Credential' && spec.user === current.metadata.name)
          : st.credentialRef?.uid === current.metadata.uid;
        if (hangs) ops.push({ op: 'delete', kind: d.kind, name: d.metadata.name });
      }
    }
    ops.push({ op: 'delete', kind: current.kind, name: current.metadata.name, ...(resourceVersion ? { ifVersion: resourceVersion } : {}) });
    const results = this.wrote(await this.store.batch(ops));
    return results.at(-1)!;
  }

  /**
   * Validates every resource, then creates or updates them (and prunes, if asked) in one
   * transaction. Nothing is written unless everything is valid, every reference resolves and
   * policy allows every single write.
   */
  async apply(inputs: readonly unknown[], opts: { dryRun?: boolean; prune?: boolean; authorize: Authorize }): Promise<ApplyResult[]> {
    // Validation (schema, CEL compilation) takes ~0.3 ms a resource on the event loop that also
    // serves the proxy: a turn for everyone else every 100 resources, not one 2,000-resource block.
    const prepared: (Prepared & { index: number })[] = [];
    for (const [index, input] of inputs.entries()) {
      if (index > 0 && index % 100 === 0) await setImmediate();
      prepared.push({ ...this.prepare(input, index), index });
    }
    const issues: Issue[] = prepared.flatMap((p) => p.issues);
    const seen = new Map<string, number>();
    for (const p of prepared) {
      if (p.issues.length) continue;
      const key = `${p.resource.kind}/${p.resource.metadata.name}`;
      const first = seen.get(key);
      if (first !== undefined) {
        issues.push({ code: 'ERR_DUPLICATE_RESOURCE', message: `${key} appears twice (first in document ${first + 1})`, path: 'metadata.name', document: p.index, segments: ['metadata', 'name'] } as Issue);
      } else seen.set(key, p.index);
    }
    if (issues.length) throw PosternError.fromIssues(issues);

    const appliedKinds = new Set(prepared.map((p) => p.resource.kind));
    const existing = new Map<string, AnyResource>();
    const snap = await this.store.snapshot([...appliedKinds]);
    for (const r of snap.items) existing.set(`${r.kind}/${r.metadata.name}`, r);
    const pruned = opts.prune
      ? snap.items.filter((r) => !seen.has(`${r.kind}/${r.metadata.name}`) && !r.metadata.annotations?.[systemAnnotation])
      : [];
    const prunedKeys = new Set(pruned.map((r) => `${r.kind}/${r.metadata.name}`));
    const refIssues = await this.missingReferences(
      prepared.map((p) => ({ r: p.resource, index: p.index })),
      (kind, name) => {
        const key = `${kind}/${name}`;
        if (seen.has(key)) return true;
        if (prunedKeys.has(key)) return false;
        return appliedKinds.has(kind) ? existing.has(key) : undefined;
      },
    );
    if (refIssues.length) throw PosternError.fromIssues(refIssues);
    const usedBy = pruned.length ? await this.referrers(pruned) : new Map<string, string[]>();
    for (const r of pruned) {
      const users = (usedBy.get(`${r.kind}/${r.metadata.name}`) ?? []).filter((u) => !seen.has(u) && !prunedKeys.has(u));
      if (users.length) throw new PosternError('ERR_IN_USE', `cannot prune ${r.kind}/${r.metadata.name}: still used by ${users.join(', ')}`);
    }

    const order = (kind: string) => kinds.indexOf(kind as Kind);
    const ops: BatchOp[] = [];
    const results: ApplyResult[] = [];
    const denied: string[] = [];
    const check = (method: string, kind: string, name: string) => {
      try {
        opts.authorize(method, kind, name);
      } catch (err) {
        if ((err as PosternError).code !== 'ERR_PERMISSION_DENIED') throw err;
        denied.push(`${method} ${kind}/${name}`);
      }
    };
    for (const p of [...prepared].sort((a, b) => order(a.resource.kind) - order(b.resource.kind) || a.index - b.index)) {
      const r = p.resource;
      const key = `${r.kind}/${r.metadata.name}`;
      const current = existing.get(key);
      if (!current) {
        check('Create', r.kind, r.metadata.name);
        const { status: _s, ...clean } = r;
        ops.push({ op: 'create', resource: clean });
        results.push({ kind: r.kind, name: r.metadata.name, action: 'created' });
        continue;
      }
      const next = this.merged(current, r);
      if (isDeepStrictEqual(desiredState(next), desiredState(current))) {
        results.push({ kind: r.kind, name: r.metadata.name, action: 'unchanged' });
        continue;
      }
      check('Update', r.kind, r.metadata.name);
      ops.push({ op: 'update', resource: next, ifVersion: r.metadata.resourceVersion || current.metadata.resourceVersion! });
      results.push({ kind: r.kind, name: r.metadata.name, action: 'configured' });
    }
    for (const r of [...pruned].sort((a, b) => order(b.kind) - order(a.kind))) {
      check('Delete', r.kind, r.metadata.name);
      ops.push({ op: 'delete', kind: r.kind, name: r.metadata.name, ifVersion: r.metadata.resourceVersion! });
      results.push({ kind: r.kind, name: r.metadata.name, action: 'pruned' });
    }
    if (denied.length) {
      throw new PosternError('ERR_PERMISSION_DENIED', `policy denies ${denied.length} of the changes; nothing was applied: ${denied.slice(0, 10).join(', ')}${denied.length > 10 ? ', …' : ''}`);
    }
    if (!opts.dryRun) this.wrote(await this.store.batch(ops));
    return results;
  }
}
