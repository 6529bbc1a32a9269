import { randomBytes } from 'node:crypto';
import { PosternError, randomUlaPrefix, type AnyResource } from '@postern/apis';
import { coreServiceName, systemAnnotation } from '@postern/apiserver';
import { AuthServer, authKinds, ensureSigningKeys } from '@postern/authserver';
import { ResourceCache, type ResourceStore } from '@postern/store';

const infoKey = 'cluster/info';
const managed = { [systemAnnotation]: 'posternd-init' };

export interface ClusterInfo {
  domain: string;
  initializedAt: string;
  /** The cluster's IPv6 ULA /64 (four groups), made at init. */
  ipv6Prefix?: string;
}

/** The cluster's info, adding the IPv6 prefix if this cluster predates it. */
export async function ensureClusterInfo(store: ResourceStore): Promise<ClusterInfo | undefined> {
  const info = await clusterInfo(store);
  if (!info || info.ipv6Prefix) return info;
  const next = { ...info, ipv6Prefix: randomUlaPrefix((n) => randomBytes(n)) };
  await store.putInternal(infoKey, next);
  return next;
}

export async function clusterInfo(store: ResourceStore): Promise<ClusterInfo | undefined> {
  return store.getInternal<ClusterInfo>(infoKey);
}

/** What `posternd init` writes: the default Namespace and ClusterConfig, root and its policy. */
export function bootstrapResources(): AnyResource[] {
  return [
    { kind: 'Namespace', metadata: { name: 'default', annotations: managed }, spec: {} },
    { kind: 'ClusterConfig', metadata: { name: 'default', annotations: managed }, spec: {} },
    {
      kind: 'Policy',
      metadata: { name: 'root-core-api', annotations: managed, description: 'Full access to the Core API; attached to the root user by posternd init.' },
      spec: { rules: [{ name: 'core-api', effect: 'ALLOW', priority: 0, condition: { match: `ctx.request.grpc.service == "${coreServiceName}"` } }] },
    },
    {
      kind: 'User',
      metadata: { name: 'root', annotations: managed, description: 'The first administrator. Its rights come from the root-core-api policy only.' },
      spec: { type: 'WORKLOAD', authorization: { policies: ['root-core-api'] } },
    },
  ];
}

/**
 * Initializes a cluster once: signing keys, bootstrap resources, and an auth token for `root`
 * (returned once; the cluster keeps only its ID). A second call finds the cluster initialized
 * and returns no token, unless `newRootToken` asks for another one.
 */
export async function initCluster(store: ResourceStore, opts: { domain: string; now: () => Date; newRootToken?: boolean }): Promise<{ info: ClusterInfo; rootToken?: string; created: boolean }> {
  const existing = await clusterInfo(store);
  if (existing && existing.domain !== opts.domain) {
    throw new PosternError('ERR_USAGE', `this data already holds a cluster for domain "${existing.domain}", not "${opts.domain}"; use another --data folder or database`);
  }
  const keys = await ensureSigningKeys(store, opts.now());
  let created = false;
  if (!existing) {
    const have = await store.snapshot(['Namespace', 'ClusterConfig', 'Policy', 'User']);
    const names = new Set(have.items.map((r) => `${r.kind}/${r.metadata.name}`));
    const missing = bootstrapResources().filter((r) => !names.has(`${r.kind}/${r.metadata.name}`));
    await store.batch(missing.map((resource) => ({ op: 'create' as const, resource })));
    await store.putInternal<ClusterInfo>(infoKey, { domain: opts.domain, initializedAt: opts.now().toISOString(), ipv6Prefix: randomUlaPrefix((n) => randomBytes(n)) }, { onlyIfAbsent: true });
    created = true;
  }
  const info = (await clusterInfo(store))!;
  if (!created && !opts.newRootToken) return { info, created };
  const cache = new ResourceCache(store, authKinds);
  await cache.start();
  try {
    const auth = new AuthServer(store, cache, keys, opts.now);
    const { token } = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'root', sessionType: 'CLIENT', maxAuthentications: 1, expiresAt: new Date(opts.now().getTime() + 7 * 86_400_000).toISOString() } });
    return { info, rootToken: token, created };
  } finally {
    cache.close();
  }
}
