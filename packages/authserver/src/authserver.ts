import { randomBytes } from 'node:crypto';
import { PosternError, type AnyResource, type CredentialSpec } from '@postern/apis';
import type { ResourceCache, ResourceStore } from '@postern/store';
import { lifetimesFor } from './lifetimes.js';
import { KeyRing, newTokenId, type StoredKey, type TokenClaims } from './tokens.js';

/** Kinds the auth server reads from its cache. */
export const authKinds = ['User', 'Group', 'Session', 'Credential', 'ClusterConfig'] as const;

export interface SessionTokens {
  accessToken: string;
  refreshToken: string;
  /** Seconds until the access token expires. */
  expiresIn: number;
  session: AnyResource;
}

/** Who a valid access token speaks for. */
export interface Identity {
  session: AnyResource;
  user: AnyResource;
  accessTokenExpiresAt: Date;
}

export interface CreatedCredential {
  credential: AnyResource;
  /** Shown once; the cluster keeps only its token ID. */
  token: string;
}

interface SessionStatusShape {
  userRef?: { name: string; uid?: string };
  credentialRef?: { name: string; uid?: string };
  type?: 'CLIENT' | 'CLIENTLESS';
  authentication?: { tokenID?: string; setAt?: string; accessTokenExpiresAt?: string; refreshTokenExpiresAt?: string };
}

const sec = (d: Date) => Math.floor(d.getTime() / 1000);
const suffix = () => randomBytes(4).toString('hex');

/** Something that turns an access token into the caller's identity (the proxy needs only this). */
export interface AccessTokenVerifier {
  verifyAccessToken(token: string): Identity;
}

/**
 * An access token's identity: signature by a key of `keys`, not expired, its session alive in
 * `cache` with the same token ID (so refresh and logout revoke at once), its user unchanged.
 * Reads memory only; a proxy worker process runs it on a verify-only key ring and a replica cache.
 */
export function verifyAccessToken(keys: KeyRing, cache: Pick<ResourceCache, 'get' | 'getByUid'>, now: Date, token: string): Identity {
  const claims = keys.verify(token, 'access');
  if (claims.exp !== undefined && claims.exp <= sec(now)) throw new PosternError('ERR_TOKEN_EXPIRED', 'the access token has expired; log in again');
  const session = cache.getByUid('Session', claims.sub);
  const status = (session?.status ?? {}) as SessionStatusShape;
  if (!session) throw new PosternError('ERR_TOKEN_INVALID', 'the session was revoked or has ended; log in again');
  if (status.authentication?.tokenID !== claims.tid) throw new PosternError('ERR_TOKEN_INVALID', 'the access token was replaced by a newer one (refresh or re-login)');
  const user = cache.get('User', status.userRef?.name ?? '');
  if (!user || user.metadata.uid !== status.userRef?.uid) throw new PosternError('ERR_TOKEN_INVALID', 'the session\'s user no longer exists');
  return { session, user, accessTokenExpiresAt: new Date((claims.exp ?? 0) * 1000) };
}

/**
 * Login and tokens: auth-token and access-token Credentials, sessions with access and refresh
 * tokens signed by the cluster's Ed25519 keys, refresh with token-ID rotation (older tokens stop
 * working at once), logout. Reads identities from a watch-fed cache; writes through the store.
 */
export class AuthServer implements AccessTokenVerifier {
  private keys: KeyRing;

  constructor(
    private readonly store: ResourceStore,
    private readonly cache: ResourceCache,
    keys: readonly StoredKey[],
    private readonly now: () => Date = () => new Date(),
  ) {
    this.keys = new KeyRing(keys);
  }

  /** Swaps in a new key ring after a rotation. */
  setKeys(keys: readonly StoredKey[]): void {
    this.keys = new KeyRing(keys);
  }

  private clusterConfig(): AnyResource | undefined {
    return this.cache.get('ClusterConfig', 'default');
  }

  private async write<T extends AnyResource>(op: () => Promise<T>, type: 'ADDED' | 'MODIFIED' | 'DELETED'): Promise<T> {
    const r = await op();
    // Apply our own write to the cache now, so a revoked token fails on this replica at once.
    this.cache.apply({ type, resource: r, version: r.metadata.resourceVersion! });
    return r;
  }

  /**
   * Creates a Credential for a user. AUTH_TOKEN: returns a token to exchange for a session.
   * ACCESS_TOKEN: also creates a CLIENTLESS session and returns its access token directly.
   */
  async createCredential(input: { name?: string; spec: CredentialSpec }): Promise<CreatedCredential> {
    const spec = input.spec;
    if (spec.type === 'OAUTH2') {
      throw new PosternError('ERR_NOT_IMPLEMENTED', 'OAUTH2 credentials (client credentials flow) are not implemented yet; use auth-token or access-token');
    }
    const user = this.cache.get('User', spec.user) ?? (await this.store.get('User', spec.user));
    if (!user) throw new PosternError('ERR_MISSING_REFERENCE', `user "${spec.user}" does not exist`);
    const tokenID = newTokenId();
    const name = input.name ?? `${spec.user}-${spec.type === 'AUTH_TOKEN' ? 'auth' : 'access'}-${suffix()}`;
    const credential = await this.write(
      () =>
        this.store.create({
          kind: 'Credential',
          metadata: { name },
          spec: { ...spec, sessionType: spec.sessionType ?? (spec.type === 'ACCESS_TOKEN' ? 'CLIENTLESS' : 'CLIENT') },
          status: { userRef: { name: user.metadata.name, uid: user.metadata.uid }, tokenID, totalAuthentications: 0 },
        }),
      'ADDED',
    );
    const expiresAt = spec.expiresAt ? new Date(spec.expiresAt) : undefined;
    if (spec.type === 'AUTH_TOKEN') {
      const claims: TokenClaims = { typ: 'auth', sub: credential.metadata.uid!, tid: tokenID, iat: sec(this.now()), ...(expiresAt ? { exp: sec(expiresAt) } : {}) };
      return { credential, token: this.keys.sign(claims) };
    }
    // ACCESS_TOKEN: a long-lived CLIENTLESS session whose access token lives as long as the credential.
    const lifetime = lifetimesFor(user, this.clusterConfig(), 'CLIENTLESS');
    const until = expiresAt ?? new Date(this.now().getTime() + lifetime.sessionMs);
    const { session, tokens } = await this.newSession(user, credential, 'CLIENTLESS', { sessionUntil: until, accessUntil: until, refreshUntil: until });
    return { credential: { ...credential, status: { ...credential.status, sessionRef: { name: session.metadata.name, uid: session.metadata.uid } } }, token: tokens.accessToken };
  }

  private async newSession(
    user: AnyResource,
    credential: AnyResource | undefined,
    type: 'CLIENT' | 'CLIENTLESS',
    until: { sessionUntil: Date; accessUntil: Date; refreshUntil: Date },
  ): Promise<{ session: AnyResource; tokens: SessionTokens }> {
    const now = this.now();
    const tokenID = newTokenId();
    const credAuth = (credential?.spec as { authorization?: unknown } | undefined)?.authorization;
    const status: SessionStatusShape = {
      userRef: { name: user.metadata.name, uid: user.metadata.uid! },
      ...(credential ? { credentialRef: { name: credential.metadata.name, uid: credential.metadata.uid! } } : {}),
      type,
      authentication: {
        tokenID,
        setAt: now.toISOString(),
        accessTokenExpiresAt: until.accessUntil.toISOString(),
        refreshTokenExpiresAt: until.refreshUntil.toISOString(),
      },
    };
    const session = await this.write(
      () =>
        this.store.create({
          kind: 'Session',
          metadata: { name: `${user.metadata.name}-${suffix()}` },
          spec: { state: 'ACTIVE', expiresAt: until.sessionUntil.toISOString(), ...(credAuth ? { authorization: credAuth } : {}) },
          status: status as Record<string, unknown>,
        }),
      'ADDED',
    );
    return { session, tokens: this.tokensFor(session, tokenID, until.accessUntil, until.refreshUntil) };
  }

  private tokensFor(session: AnyResource, tokenID: string, accessUntil: Date, refreshUntil: Date): SessionTokens {
    const iat = sec(this.now());
    return {
      accessToken: this.keys.sign({ typ: 'access', sub: session.metadata.uid!, tid: tokenID, iat, exp: sec(accessUntil) }),
      refreshToken: this.keys.sign({ typ: 'refresh', sub: session.metadata.uid!, tid: tokenID, iat, exp: sec(refreshUntil) }),
      expiresIn: Math.max(0, sec(accessUntil) - iat),
      session,
    };
  }

  private checkExpiry(claims: TokenClaims, what: string): void {
    if (claims.exp !== undefined && claims.exp <= sec(this.now())) {
      throw new PosternError('ERR_TOKEN_EXPIRED', `the ${what} has expired; log in again`);
    }
  }

  /** Exchanges an AUTH_TOKEN credential's token for a new session. */
  async authenticateWithAuthToken(token: string): Promise<SessionTokens> {
    const claims = this.keys.verify(token, 'auth');
    this.checkExpiry(claims, 'auth token');
    // A credential or user written a moment ago may not be in this cache yet (another component's
    // write, or a watch reconnecting after a database outage): on a miss, catch up once and look again.
    let caughtUp = false;
    const catchUp = async () => {
      caughtUp = true;
      await this.cache.waitFor(await this.store.currentVersion());
    };
    for (let attempt = 0; ; attempt++) {
      const credential = this.cache.getByUid('Credential', claims.sub);
      if (!credential && !caughtUp) {
        await catchUp();
        continue;
      }
      if (!credential) throw new PosternError('ERR_TOKEN_INVALID', 'the auth token was revoked (its credential no longer exists)');
      const spec = credential.spec as CredentialSpec;
      const status = (credential.status ?? {}) as { tokenID?: string; totalAuthentications?: number };
      if (status.tokenID !== claims.tid) throw new PosternError('ERR_TOKEN_INVALID', 'the auth token was rotated or revoked');
      if (spec.isDisabled) throw new PosternError('ERR_CREDENTIAL_EXHAUSTED', 'the credential is disabled');
      if (spec.expiresAt && Date.parse(spec.expiresAt) <= this.now().getTime()) throw new PosternError('ERR_TOKEN_EXPIRED', 'the credential has expired');
      const used = status.totalAuthentications ?? 0;
      if (spec.maxAuthentications && used >= spec.maxAuthentications) {
        throw new PosternError('ERR_CREDENTIAL_EXHAUSTED', `the credential was already used ${used} time(s), its maximum`);
      }
      const user = this.cache.get('User', spec.user);
      if (!user && !caughtUp) {
        await catchUp();
        continue;
      }
      if (!user) throw new PosternError('ERR_TOKEN_INVALID', `the credential's user "${spec.user}" no longer exists`);
      if ((user.spec as { isDisabled?: boolean }).isDisabled) throw new PosternError('ERR_PERMISSION_DENIED', `user "${spec.user}" is disabled`);
      try {
        // A limited credential counts its uses first, guarded by resourceVersion, so the limit
        // holds under races. An unlimited one is not written at all: many workers may share it.
        if (spec.maxAuthentications) await this.write(
          () =>
            this.store.update(
              { ...credential, status: { ...credential.status, totalAuthentications: used + 1, lastAuthenticationAt: this.now().toISOString() } },
              { ifVersion: credential.metadata.resourceVersion! },
            ),
          'MODIFIED',
        );
      } catch (err) {
        if ((err as PosternError).code === 'ERR_CONFLICT' && attempt < 30) {
          await this.cache.waitFor(await this.store.currentVersion());
          await new Promise((r) => setTimeout(r, Math.random() * 10 * (attempt + 1)));
          continue;
        }
        throw err;
      }
      const type = spec.sessionType ?? 'CLIENT';
      const life = lifetimesFor(user, this.clusterConfig(), type);
      const now = this.now().getTime();
      const sessionUntil = new Date(now + life.sessionMs);
      const clamp = (ms: number) => new Date(Math.min(now + ms, sessionUntil.getTime()));
      return (await this.newSession(user, credential, type, { sessionUntil, accessUntil: clamp(life.accessTokenMs), refreshUntil: clamp(life.refreshTokenMs) })).tokens;
    }
  }

  /** New access and refresh tokens for a session; the session's token ID rotates, so the old pair stops working. */
  async refresh(refreshToken: string): Promise<SessionTokens> {
    const claims = this.keys.verify(refreshToken, 'refresh');
    this.checkExpiry(claims, 'refresh token');
    const session = this.cache.getByUid('Session', claims.sub);
    const status = (session?.status ?? {}) as SessionStatusShape;
    if (!session || status.authentication?.tokenID !== claims.tid) {
      throw new PosternError('ERR_TOKEN_INVALID', 'the refresh token was already used or the session was revoked; log in again');
    }
    const user = this.cache.get('User', status.userRef?.name ?? '');
    if (!user) throw new PosternError('ERR_TOKEN_INVALID', 'the session\'s user no longer exists');
    const spec = session.spec as { expiresAt?: string; state?: string };
    const now = this.now().getTime();
    const sessionUntil = spec.expiresAt ? Date.parse(spec.expiresAt) : Infinity;
    if (sessionUntil <= now) throw new PosternError('ERR_TOKEN_EXPIRED', 'the session has expired; log in again');
    if ((spec.state ?? 'ACTIVE') !== 'ACTIVE') throw new PosternError('ERR_PERMISSION_DENIED', `the session is ${spec.state}`);
    const life = lifetimesFor(user, this.clusterConfig(), status.type ?? 'CLIENT');
    const accessUntil = new Date(Math.min(now + life.accessTokenMs, sessionUntil));
    const refreshUntil = new Date(Math.min(now + life.refreshTokenMs, sessionUntil));
    const tokenID = newTokenId();
    let updated: AnyResource;
    try {
      updated = await this.write(
        () =>
          this.store.update(
            {
              ...session,
              status: {
                ...session.status,
                authentication: {
                  ...status.authentication,
                  tokenID,
                  setAt: new Date(now).toISOString(),
                  accessTokenExpiresAt: accessUntil.toISOString(),
                  refreshTokenExpiresAt: refreshUntil.toISOString(),
                },
              },
            },
            { ifVersion: session.metadata.resourceVersion! },
          ),
        'MODIFIED',
      );
    } catch (err) {
      // Two refreshes with one token: the first wins, the second token is spent.
      if ((err as PosternError).code === 'ERR_CONFLICT') throw new PosternError('ERR_TOKEN_INVALID', 'the refresh token was already used; log in again');
      throw err;
    }
    return this.tokensFor(updated, tokenID, accessUntil, refreshUntil);
  }

  /** Checks an access token against its session; throws ERR_TOKEN_INVALID / ERR_TOKEN_EXPIRED. No database round trip. */
  verifyAccessToken(token: string): Identity {
    return verifyAccessToken(this.keys, this.cache, this.now(), token);
  }

  /** Ends the session the access token belongs to. */
  async logout(accessToken: string): Promise<void> {
    const { session } = this.verifyAccessToken(accessToken);
    await this.write(() => this.store.delete('Session', session.metadata.name), 'DELETED');
  }
}
