import { z } from 'zod';
import { Metadata } from '../meta.js';
import { ClusterConfigSpec, ConfigSpec, GatewaySpec, GatewayStatus, RegionSpec, SecretSpec } from './cluster.js';
import {
  CredentialSpec,
  CredentialStatus,
  DeviceSpec,
  DeviceStatus,
  GroupSpec,
  IdentityProviderSpec,
  NamespaceSpec,
  SessionSpec,
  SessionStatus,
  UserSpec,
} from './identity.js';
import { PolicySpec } from './policy.js';
import { ServiceSpec, ServiceStatus } from './service.js';

const AnyStatus = z.looseObject({});

interface KindInfo {
  spec: z.ZodType;
  status: z.ZodType;
  /** Lower-case names and short forms accepted on the command line. */
  aliases: readonly string[];
  /** Names are `name.namespace` (Services). */
  namespaced: boolean;
  /** Written only by Postern itself (sessions, gateways); `apply` refuses them. */
  system: boolean;
  /** Whether a document must carry `spec`. */
  specRequired: boolean;
}

const info = (spec: z.ZodType, aliases: string[], opts: Partial<Omit<KindInfo, 'spec' | 'aliases'>> = {}): KindInfo => ({
  spec,
  status: opts.status ?? AnyStatus,
  aliases,
  namespaced: opts.namespaced ?? false,
  system: opts.system ?? false,
  specRequired: opts.specRequired ?? true,
});

/** Every kind of REFERENCE.md, in the order `apply` writes them (dependencies first). */
export const kindInfo = {
  Namespace: info(NamespaceSpec, ['namespace', 'namespaces', 'ns'], { specRequired: false }),
  Secret: info(SecretSpec, ['secret', 'secrets', 'sec'], { specRequired: false }),
  Config: info(ConfigSpec, ['config', 'configs', 'cfg'], { specRequired: false }),
  Policy: info(PolicySpec, ['policy', 'policies', 'pol']),
  Group: info(GroupSpec, ['group', 'groups', 'grp'], { specRequired: false }),
  User: info(UserSpec, ['user', 'users', 'usr']),
  IdentityProvider: info(IdentityProviderSpec, ['identityprovider', 'identityproviders', 'idp']),
  ClusterConfig: info(ClusterConfigSpec, ['clusterconfig', 'clusterconfigs', 'cc'], { specRequired: false }),
  Region: info(RegionSpec, ['region', 'regions', 'rgn'], { specRequired: false }),
  Service: info(ServiceSpec, ['service', 'services', 'svc'], { namespaced: true, status: ServiceStatus }),
  Credential: info(CredentialSpec, ['credential', 'credentials', 'cred'], { status: CredentialStatus }),
  Device: info(DeviceSpec, ['device', 'devices', 'dev'], { status: DeviceStatus, specRequired: false }),
  Session: info(SessionSpec, ['session', 'sessions', 'sess'], { status: SessionStatus, system: true, specRequired: false }),
  Gateway: info(GatewaySpec, ['gateway', 'gateways', 'gw'], { status: GatewayStatus, system: true, specRequired: false }),
} as const satisfies Record<string, KindInfo>;

export type Kind = keyof typeof kindInfo;
export const kinds = Object.keys(kindInfo) as Kind[];

export function isKind(k: unknown): k is Kind {
  return typeof k === 'string' && Object.hasOwn(kindInfo, k);
}

/** The kind a CLI word names (`svc`, `services`, `Service`), or undefined. */
export function kindFromAlias(word: string): Kind | undefined {
  const w = word.toLowerCase();
  return kinds.find((k) => k.toLowerCase() === w || (kindInfo[k].aliases as readonly string[]).includes(w));
}

/** The schema of a whole resource document of one kind. */
export function resourceSchema<K extends Kind>(kind: K) {
  const k = kindInfo[kind];
  return z.strictObject({
    apiVersion: z.enum(['core/v1']).optional(),
    kind: z.literal(kind),
    metadata: Metadata,
    spec: (k.specRequired ? k.spec : k.spec.optional()) as (typeof kindInfo)[K]['spec'],
    status: k.status.optional(),
  });
}

export type SpecOf<K extends Kind> = z.infer<(typeof kindInfo)[K]['spec']>;

/** A resource of any kind, as stored and sent over the API. Status is free-form JSON. */
export const AnyResource = z.looseObject({
  apiVersion: z.string().optional(),
  kind: z.string(),
  metadata: Metadata,
  spec: z.record(z.string(), z.unknown()).optional(),
  status: z.record(z.string(), z.unknown()).optional(),
});
export type AnyResource = z.infer<typeof AnyResource>;

/** A resource of one kind with its spec typed. */
export type Resource<K extends Kind> = Omit<AnyResource, 'kind' | 'spec'> & { kind: K; spec: SpecOf<K> };

export * from './cluster.js';
export * from './identity.js';
export * from './policy.js';
export * from './service.js';
