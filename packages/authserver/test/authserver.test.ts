import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isPosternError } from '@postern/apis';
import { ResourceCache, openStore, type SqlStore } from '@postern/store';
import { AuthServer, authKinds, ensureSigningKeys, lifetimesFor } from '../src/index.js';

/** A clock the test moves by hand: no test sleeps to wait for time. */
class FakeClock {
  constructor(private t: number) {}
  now = () => new Date(this.t);
  advance(ms: number) {
    this.t += ms;
  }
}

const hour = 3_600_000;
const codeOf = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return isPosternError(err) ? err.code : String(err);
  }
  return 'no error';
};
const asyncCodeOf = async (p: Promise<unknown>) => p.then(() => 'no error', (err: unknown) => (isPosternError(err) ? err.code : String(err)));

describe('auth server (PGlite in memory, fake clock)', () => {
  let store: SqlStore;
  let cache: ResourceCache;
  let auth: AuthServer;
  const clock = new FakeClock(Date.parse('2026-03-01T00:00:00Z'));
  before(async () => {
    store = await openStore({ now: clock.now });
    await store.batch([
      { op: 'create', resource: { kind: 'User', metadata: { name: 'human' }, spec: { type: 'HUMAN' } } },
      { op: 'create', resource: { kind: 'User', metadata: { name: 'robot' }, spec: { type: 'WORKLOAD' } } },
      { op: 'create', resource: { kind: 'User', metadata: { name: 'short' }, spec: { type: 'HUMAN', session: { accessTokenDuration: { minutes: 5 }, clientDuration: { hours: 1 } } } } },
    ]);
    cache = new ResourceCache(store, authKinds);
    await cache.start();
    auth = new AuthServer(store, cache, await ensureSigningKeys(store, clock.now()), clock.now);
  });
  after(async () => {
    cache.close();
    await store.close();
  });

  it('uses the reference lifetimes per user type, overridable per user', () => {
    const h = lifetimesFor(cache.get('User', 'human')!, undefined, 'CLIENT');
    assert.deepEqual(h, { sessionMs: 21 * hour, accessTokenMs: 4 * hour, refreshTokenMs: 21 * hour });
    const w = lifetimesFor(cache.get('User', 'robot')!, undefined, 'CLIENT');
    assert.deepEqual(w, { sessionMs: 90 * 24 * hour, accessTokenMs: 4 * hour, refreshTokenMs: 14 * 24 * hour });
    const cc = { kind: 'ClusterConfig', metadata: { name: 'default' }, spec: { session: { human: { accessTokenDuration: { hours: 1 } } } } };
    assert.equal(lifetimesFor(cache.get('User', 'human')!, cc, 'CLIENT').accessTokenMs, hour);
    assert.equal(lifetimesFor(cache.get('User', 'short')!, cc, 'CLIENT').accessTokenMs, 5 * 60_000, 'the user beats the cluster');
  });

  it('expires access tokens and sessions on the clock, and refresh stops at the session end', async () => {
    const { token } = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'short' } });
    const t = await auth.authenticateWithAuthToken(token);
    assert.equal(auth.verifyAccessToken(t.accessToken).user.metadata.name, 'short');
    clock.advance(5 * 60_000 + 1000);
    assert.equal(codeOf(() => auth.verifyAccessToken(t.accessToken)), 'ERR_TOKEN_EXPIRED');
    const t2 = await auth.refresh(t.refreshToken);
    assert.equal(auth.verifyAccessToken(t2.accessToken).session.metadata.name, t.session.metadata.name);
    clock.advance(hour);
    assert.equal(await asyncCodeOf(auth.refresh(t2.refreshToken)), 'ERR_TOKEN_EXPIRED');
  });

  it('rotates the token ID on refresh: the old access and refresh tokens fail at once', async () => {
    const { token } = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'human' } });
    const t = await auth.authenticateWithAuthToken(token);
    const t2 = await auth.refresh(t.refreshToken);
    assert.equal(codeOf(() => auth.verifyAccessToken(t.accessToken)), 'ERR_TOKEN_INVALID');
    assert.equal(await asyncCodeOf(auth.refresh(t.refreshToken)), 'ERR_TOKEN_INVALID');
    assert.ok(auth.verifyAccessToken(t2.accessToken));
  });

  it('lets only one of two concurrent refreshes with the same token win', async () => {
    const { token } = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'human' } });
    const t = await auth.authenticateWithAuthToken(token);
    const results = await Promise.allSettled([auth.refresh(t.refreshToken), auth.refresh(t.refreshToken)]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  });

  it('ends credentials at expiry, when disabled or deleted, and after maxAuthentications', async () => {
    const soon = new Date(clock.now().getTime() + hour).toISOString();
    const exp = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'human', expiresAt: soon } });
    clock.advance(hour + 1);
    assert.equal(await asyncCodeOf(auth.authenticateWithAuthToken(exp.token)), 'ERR_TOKEN_EXPIRED');
    const lim = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'human', maxAuthentications: 2 } });
    await auth.authenticateWithAuthToken(lim.token);
    await auth.authenticateWithAuthToken(lim.token);
    assert.equal(await asyncCodeOf(auth.authenticateWithAuthToken(lim.token)), 'ERR_CREDENTIAL_EXHAUSTED');
    const del = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'human' } });
    const removed = await store.delete('Credential', del.credential.metadata.name);
    cache.apply({ type: 'DELETED', resource: removed, version: removed.metadata.resourceVersion! });
    assert.equal(await asyncCodeOf(auth.authenticateWithAuthToken(del.token)), 'ERR_TOKEN_INVALID');
  });

  it('gives ACCESS_TOKEN credentials a CLIENTLESS session whose token works directly', async () => {
    const { token, credential } = await auth.createCredential({ spec: { type: 'ACCESS_TOKEN', user: 'robot' } });
    const id = auth.verifyAccessToken(token);
    assert.equal((id.session.status as { type: string }).type, 'CLIENTLESS');
    assert.equal((credential.status as { sessionRef: { name: string } }).sessionRef.name, id.session.metadata.name);
    assert.equal(await asyncCodeOf(auth.authenticateWithAuthToken(token)), 'ERR_TOKEN_INVALID', 'an access token is not an auth token');
  });

  it('refuses OAUTH2 credentials loudly until they exist', async () => {
    assert.equal(await asyncCodeOf(auth.createCredential({ spec: { type: 'OAUTH2', user: 'robot' } })), 'ERR_NOT_IMPLEMENTED');
  });

  it('rotates signing keys without logging anyone out', async () => {
    const { token } = await auth.createCredential({ spec: { type: 'AUTH_TOKEN', user: 'robot' } });
    const t = await auth.authenticateWithAuthToken(token);
    const before = await ensureSigningKeys(store, clock.now());
    clock.advance(2000);
    const after = await ensureSigningKeys(store, clock.now(), { rotateAfterMs: 1000 });
    assert.equal(after.length, before.length + 1);
    auth.setKeys(after);
    assert.equal(auth.verifyAccessToken(t.accessToken).user.metadata.name, 'robot', 'tokens signed by the old key still verify');
    const fresh = await auth.refresh(t.refreshToken);
    const kid = (tok: string) => (JSON.parse(Buffer.from(tok.split('.')[0]!, 'base64url').toString()) as { kid: string }).kid;
    assert.equal(kid(fresh.accessToken), after.at(-1)!.kid, 'new tokens are signed by the new key');
    assert.notEqual(kid(t.refreshToken), kid(fresh.accessToken));
  });
});
