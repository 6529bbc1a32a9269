import { z } from 'zod';
import { Attrs, Duration, SecretRef } from '../meta.js';
import { Authorization, Condition } from './policy.js';

const Ref = z.looseObject({ name: z.string(), uid: z.string().optional() });

export const SessionDurations = z.strictObject({
  clientDuration: Duration.optional(),
  clientlessDuration: Duration.optional(),
  accessTokenDuration: Duration.optional(),
  refreshTokenDuration: Duration.optional(),
});
export type SessionDurations = z.infer<typeof SessionDurations>;

export const UserSpec = z.strictObject({
  type: z.enum(['HUMAN', 'WORKLOAD']),
  email: z.email().optional(),
  groups: z.array(z.string().min(1)).optional(),
  authorization: Authorization.optional(),
  isDisabled: z.boolean().optional(),
  session: SessionDurations.optional(),
  authentication: z
    .strictObject({
      identities: z.array(z.strictObject({ identityProvider: z.string().min(1), identifier: z.string().min(1) })).optional(),
    })
    .optional(),
  attrs: Attrs.optional(),
});
export type UserSpec = z.infer<typeof UserSpec>;

export const GroupSpec = z.strictObject({ authorization: Authorization.optional(), attrs: Attrs.optional() });
export const NamespaceSpec = z.strictObject({ authorization: Authorization.optional(), attrs: Attrs.optional() });

export const SessionType = z.enum(['CLIENT', 'CLIENTLESS']);
export type SessionType = z.infer<typeof SessionType>;

export const SessionSpec = z.strictObject({
  state: z.enum(['ACTIVE', 'PENDING', 'REJECTED']).default('ACTIVE'),
  expiresAt: z.string().optional(),
  authorization: Authorization.optional(),
});

export const SessionStatus = z.looseObject({
  userRef: Ref.optional(),
  deviceRef: Ref.optional(),
  credentialRef: Ref.optional(),
  type: SessionType.optional(),
  isBrowser: z.boolean().optional(),
  authentication: z
    .looseObject({
      tokenID: z.string().optional(),
      setAt: z.string().optional(),
      accessTokenExpiresAt: z.string().optional(),
      refreshTokenExpiresAt: z.string().optional(),
      info: z.looseObject({ type: z.string().optional() }).optional(),
    })
    .optional(),
  isConnected: z.boolean().optional(),
  connection: z
    .looseObject({
      addresses: z.array(z.string()).optional(),
      type: z.enum(['WIREGUARD', 'QUIC']).optional(),
      startedAt: z.string().optional(),
      lastSeenAt: z.string().optional(),
      publishedServices: z.array(z.unknown()).optional(),
    })
    .optional(),
});
export type SessionStatus = z.infer<typeof SessionStatus>;

export const DeviceSpec = z.strictObject({
  state: z.enum(['ACTIVE', 'PENDING', 'REJECTED']).default('ACTIVE'),
  authorization: Authorization.optional(),
});
export const DeviceStatus = z.looseObject({ userRef: Ref.optional(), osType: z.string().optional(), hostname: z.string().optional() });

export const CredentialType = z.enum(['AUTH_TOKEN', 'OAUTH2', 'ACCESS_TOKEN']);
export type CredentialType = z.infer<typeof CredentialType>;

export const CredentialSpec = z.strictObject({
  type: CredentialType,
  user: z.string().min(1),
  expiresAt: z.iso.datetime({ offset: true }).optional(),
  maxAuthentications: z.number().int().min(0).optional(),
  sessionType: SessionType.optional(),
  authorization: Authorization.optional(),
  isDisabled: z.boolean().optional(),
});
export type CredentialSpec = z.infer<typeof CredentialSpec>;

export const CredentialStatus = z.looseObject({
  userRef: Ref.optional(),
  tokenID: z.string().optional(),
  totalAuthentications: z.number().optional(),
  lastAuthenticationAt: z.string().optional(),
  sessionRef: Ref.optional(),
});

export const IdentityProviderSpec = z
  .strictObject({
    oidc: z
      .strictObject({
        issuerURL: z.url(),
        clientID: z.string().min(1),
        clientSecret: SecretRef,
        scopes: z.array(z.string()).optional(),
        identifierClaim: z.string().default('email'),
      })
      .optional(),
    github: z.strictObject({ clientID: z.string().min(1), clientSecret: SecretRef }).optional(),
    oidcIdentityToken: z.strictObject({ issuerURL: z.url(), audience: z.string().min(1), identifierClaim: z.string().optional() }).optional(),
    postAuthenticationRules: z.array(z.strictObject({ condition: Condition, effect: z.enum(['ALLOW', 'DENY']) })).optional(),
    isDisabled: z.boolean().optional(),
  })
  .check((ctx) => {
    const set = (['oidc', 'github', 'oidcIdentityToken'] as const).filter((k) => ctx.value[k] !== undefined);
    if (set.length !== 1) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        message: `an IdentityProvider takes exactly one of oidc, github, oidcIdentityToken${set.length ? `; found ${set.join(' and ')}` : ''}`,
        params: { postern: 'ERR_ONE_OF' },
      });
    }
  });
