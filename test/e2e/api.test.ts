import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isPosternError, type AnyResource } from '@postern/apis';
import { ApiClient } from '@postern/apiserver';
import { startTestCluster, TestPostgres, type TestCluster } from '../harness/index.js';

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isPosternError(err), String(err));
    assert.equal(err.code, code, err.message);
    return true;
  });
}

/** A client logged in through the Auth API directly (no CLI), for precise API assertions. */
async function clientFor(tc: TestCluster, authToken: string): Promise<{ api: ApiClient; access: string; refresh: string }> {
  const anon = new ApiClient({ address: tc.cluster.address, ca: tc.cluster.caPem!, serverName: 'api.example.test' });
  const t = await anon.authenticateWithAuthToken(authToken);
  anon.close();
  let access = t.accessToken;
  const api = new ApiClient({ address: tc.cluster.address, ca: tc.cluster.caPem!, serverName: 'api.example.test', token: () => access });
  return {
    api,
    get access() {
      return access;
    },
    set access(v: string) {
      access = v;
    },
    refresh: t.refreshToken,
  } as { api: ApiClient; access: string; refresh: string };
}

const group = (name: string): AnyResource => ({ kind: 'Group', metadata: { name }, spec: {} });

describe('Core API: concurrency, atomic apply, tokens, secrets', () => {
  let tc: TestCluster;
  let root: { api: ApiClient; access: string; refresh: string };
  before(async () => {
    tc = await startTestCluster();
    root = await clientFor(tc, tc.cluster.rootToken!);
  });
  after(async () => {
    root.api.close();
    await tc.stop();
  });

  it('rejects an update with a stale resourceVersion (ABORTED / ERR_CONFLICT)', async () => {
    const g = await root.api.create(group('occ'));
    const g2 = await root.api.update({ ...g, spec: { attrs: { v: 2 } } });
    assert.notEqual(g2.metadata.resourceVersion, g.metadata.resourceVersion);
    await rejectsWith(root.api.update({ ...g, spec: { attrs: { v: 3 } } }), 'ERR_CONFLICT');
    await rejectsWith(root.api.create(group('occ')), 'ERR_ALREADY_EXISTS');
    await rejectsWith(root.api.get('Group', 'nope'), 'ERR_NOT_FOUND');
    await rejectsWith(root.api.get('Widget', 'x'), 'ERR_UNKNOWN_KIND');
  });

  it('applies all or nothing: duplicates, bad CEL and missing references write nothing', async () => {
    const dup = [group('dup-a'), group('dup-a')];
    await rejectsWith(root.api.apply(dup), 'ERR_DUPLICATE_RESOURCE');
    const badCel = [group('cel-ok'), { kind: 'Policy', metadata: { name: 'bad-cel' }, spec: { rules: [{ effect: 'ALLOW', condition: { match: 'ctx.user.spec.groups.exists(g, ' } }] } }];
    await assert.rejects(root.api.apply(badCel), (err: unknown) => {
      assert.ok(isPosternError(err, 'ERR_INVALID_CEL'));
      assert.equal(err.issues[0]?.path, 'spec.rules[0].condition.match');
      assert.equal(err.issues[0]?.document, 1);
      assert.match(err.issues[0]!.message, /column \d+/);
      return true;
    });
    const missing = [group('ref-a'), { kind: 'User', metadata: { name: 'ref-u' }, spec: { type: 'HUMAN', groups: ['ref-a', 'no-such-group'] } }];
    await rejectsWith(root.api.apply(missing), 'ERR_MISSING_REFERENCE');
    for (const n of ['dup-a', 'cel-ok', 'ref-a']) await rejectsWith(root.api.get('Group', n), 'ERR_NOT_FOUND');
    await rejectsWith(root.api.apply([{ kind: 'Session', metadata: { name: 'forged' }, spec: {} }]), 'ERR_READ_ONLY_KIND');
  });

  it('dry-runs without writing, prunes only what it applied the kind of, and never init resources', async () => {
    const dry = await root.api.apply([group('dry-1')], { dryRun: true });
    assert.deepEqual(dry.map((r) => r.action), ['created']);
    await rejectsWith(root.api.get('Group', 'dry-1'), 'ERR_NOT_FOUND');
    await root.api.apply([group('keep'), group('drop')]);
    const pruned = await root.api.apply([group('keep'), group('occ')], { prune: true });
    assert.deepEqual(Object.fromEntries(pruned.map((r) => [r.name, r.action])), { keep: 'unchanged', occ: 'configured', drop: 'pruned' });
    await rejectsWith(root.api.get('Group', 'drop'), 'ERR_NOT_FOUND');
    const users = await root.api.apply([{ kind: 'User', metadata: { name: 'only-user' }, spec: { type: 'HUMAN' } }], { prune: true, dryRun: true });
    assert.ok(!users.some((r) => r.name === 'root'), 'root is never pruned');
  });

  it('refuses to delete a Policy still attached, and deletes a User with its sessions', async () => {
    await root.api.apply([{ kind: 'Policy', metadata: { name: 'p-used' }, spec: { rules: [] } }, { kind: 'Group', metadata: { name: 'g-uses' }, spec: { authorization: { policies: ['p-used'] } } }]);
    await rejectsWith(root.api.delete('Policy', 'p-used'), 'ERR_IN_USE');
    // Pruning it is refused the same way while a resource of a kind not applied still uses it;
    // with its user pruned in the same apply, both go.
    const policies = [{ kind: 'Policy', metadata: { name: 'p-kept' }, spec: { rules: [] } }];
    const all = await root.api.list('Policy');
    const keepOthers = all.items.filter((p) => !['p-used', 'p-kept'].includes(p.metadata.name) && !p.metadata.annotations?.['postern.io/managed-by']).map((p) => ({ kind: 'Policy', metadata: { name: p.metadata.name }, spec: p.spec }));
    await assert.rejects(root.api.apply([...policies, ...keepOthers], { prune: true }), (err: Error) => /cannot prune Policy\/p-used: still used by Group\/g-uses/.test(err.message));
    await root.api.get('Policy', 'p-used');
    const groups = (await root.api.list('Group')).items.filter((g) => g.metadata.name !== 'g-uses').map((g) => ({ kind: 'Group', metadata: { name: g.metadata.name }, spec: g.spec }));
    const both = await root.api.apply([...policies, ...keepOthers, ...groups], { prune: true });
    assert.deepEqual(both.filter((r) => r.action === 'pruned').map((r) => `${r.kind}/${r.name}`).sort(), ['Group/g-uses', 'Policy/p-used']);
    await root.api.apply([{ kind: 'User', metadata: { name: 'temp' }, spec: { type: 'HUMAN' } }]);
    const cred = await root.api.createCredential({ user: 'temp', type: 'auth-token' });
    const temp = await clientFor(tc, cred.token);
    assert.equal((await temp.api.status()).user?.metadata?.name, 'temp');
    await root.api.delete('User', 'temp');
    await rejectsWith(temp.api.status(), 'ERR_TOKEN_INVALID');
    temp.api.close();
  });

  it('rotates tokens: a refresh invalidates the old access and refresh tokens at once', async () => {
    await root.api.apply([{ kind: 'User', metadata: { name: 'rot' }, spec: { type: 'HUMAN' } }]);
    const cred = await root.api.createCredential({ user: 'rot', type: 'auth-token' });
    const u = await clientFor(tc, cred.token);
    const oldAccess = u.access;
    const anon = new ApiClient({ address: tc.cluster.address, ca: tc.cluster.caPem!, serverName: 'api.example.test' });
    const next = await anon.refresh(u.refresh);
    await rejectsWith(u.api.status(), 'ERR_TOKEN_INVALID');
    await rejectsWith(anon.refresh(u.refresh), 'ERR_TOKEN_INVALID');
    u.access = next.accessToken;
    assert.equal((await u.api.status()).user?.metadata?.name, 'rot');
    assert.notEqual(next.accessToken, oldAccess);
    await u.api.logout();
    await rejectsWith(u.api.status(), 'ERR_TOKEN_INVALID');
    await rejectsWith(anon.refresh(next.refreshToken), 'ERR_TOKEN_INVALID');
    anon.close();
    u.api.close();
  });

  it('rejects forged, tampered and wrong-type tokens', async () => {
    const [h, b, s] = root.access.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(b, 'base64url').toString()) as Record<string, unknown>;
    const tampered = `${h}.${Buffer.from(JSON.stringify({ ...claims, exp: 9_999_999_999 })).toString('base64url')}.${s}`;
    for (const token of [tampered, 'not-a-token', `${h}.${b}.${Buffer.alloc(64).toString('base64url')}`, root.refresh]) {
      const c = new ApiClient({ address: tc.cluster.address, ca: tc.cluster.caPem!, serverName: 'api.example.test', token: () => token });
      await rejectsWith(c.list('Group'), 'ERR_TOKEN_INVALID');
      c.close();
    }
    const none = new ApiClient({ address: tc.cluster.address, ca: tc.cluster.caPem!, serverName: 'api.example.test' });
    await rejectsWith(none.list('Group'), 'ERR_UNAUTHENTICATED');
    none.close();
  });

  it('limits an auth token to maxAuthentications', async () => {
    await root.api.apply([{ kind: 'User', metadata: { name: 'once' }, spec: { type: 'WORKLOAD' } }]);
    const cred = await root.api.createCredential({ user: 'once', type: 'auth-token', maxAuthentications: 1 });
    (await clientFor(tc, cred.token)).api.close();
    await rejectsWith(clientFor(tc, cred.token), 'ERR_CREDENTIAL_EXHAUSTED');
  });

  it('returns a Secret value only through GetSecretValue, and only when policy allows it', async () => {
    await root.api.create({ kind: 'Secret', metadata: { name: 's1' }, spec: { data: { value: 'hunter2' } } });
    const got = await root.api.get('Secret', 's1');
    assert.ok(!JSON.stringify(got).includes('hunter2'));
    const listed = await root.api.list('Secret');
    assert.ok(!JSON.stringify(listed).includes('hunter2'));
    assert.equal((await root.api.getSecretValue('s1')).value, 'hunter2');
    // A reader allowed Get and List but not GetSecretValue.
    await root.api.apply([
      { kind: 'Policy', metadata: { name: 'reader' }, spec: { rules: [{ effect: 'ALLOW', condition: { match: 'ctx.request.grpc.method in ["Get", "List"]' } }] } },
      { kind: 'User', metadata: { name: 'reader' }, spec: { type: 'HUMAN', authorization: { policies: ['reader'] } } },
    ]);
    const cred = await root.api.createCredential({ user: 'reader', type: 'auth-token' });
    const reader = await clientFor(tc, cred.token);
    assert.ok(!JSON.stringify(await reader.api.get('Secret', 's1')).includes('hunter2'));
    await rejectsWith(reader.api.getSecretValue('s1'), 'ERR_PERMISSION_DENIED');
    await rejectsWith(reader.api.create(group('nope')), 'ERR_PERMISSION_DENIED');
    reader.api.close();
  });

  it('has no superuser: root loses Core API access when its policy is detached', async () => {
    await root.api.apply([{ kind: 'User', metadata: { name: 'admin2' }, spec: { type: 'WORKLOAD', authorization: { policies: ['root-core-api'] } } }]);
    const cred = await root.api.createCredential({ user: 'admin2', type: 'auth-token' });
    const admin2 = await clientFor(tc, cred.token);
    const rootUser = await admin2.api.get('User', 'root');
    await admin2.api.update({ ...rootUser, spec: { ...rootUser.spec, authorization: { policies: [] } } });
    await rejectsWith(root.api.list('Group'), 'ERR_PERMISSION_DENIED');
    await admin2.api.update({ ...(await admin2.api.get('User', 'root')), spec: { ...rootUser.spec } });
    assert.ok((await root.api.list('Group')).items.length > 0);
    admin2.api.close();
  });

  it('streams watch events and hides Secret values in them', async () => {
    const from = (await root.api.list('Secret')).resourceVersion;
    const events: { type: string; resource: AnyResource }[] = [];
    const done = new Promise<void>((resolve, reject) => {
      const w = root.api.watch(['Secret'], from, (ev) => {
        events.push(ev as never);
        if (events.length === 2) {
          w.cancel();
          resolve();
        }
      }, (err) => (err ? reject(err) : resolve()));
    });
    await root.api.create({ kind: 'Secret', metadata: { name: 'w1' }, spec: { data: { value: 'watch-secret' } } });
    await root.api.delete('Secret', 'w1');
    await done;
    assert.deepEqual(events.map((e) => e.type), ['ADDED', 'DELETED']);
    assert.ok(!JSON.stringify(events).includes('watch-secret'));
  });
});

describe('Core API on PostgreSQL: the database goes away mid-run', () => {
  let pgSrv: TestPostgres;
  let tc: TestCluster;
  let root: { api: ApiClient; access: string; refresh: string };
  before(async () => {
    pgSrv = await TestPostgres.create();
    tc = await startTestCluster({ database: await pgSrv.createDatabase('api') });
    root = await clientFor(tc, tc.cluster.rootToken!);
  });
  after(async () => {
    root.api.close();
    await tc.stop();
    await pgSrv.destroy();
  });

  it('answers UNAVAILABLE while PostgreSQL is down, keeps running, and recovers with its cache current', async () => {
    await root.api.create(group('before'));
    await pgSrv.stop();
    await rejectsWith(root.api.create(group('while-down')), 'ERR_STORE_UNAVAILABLE');
    await pgSrv.start();
    let ok = false;
    for (let i = 0; i < 100 && !ok; i++) {
      try {
        await root.api.create(group('after'));
        ok = true;
      } catch (err) {
        assert.ok(isPosternError(err, 'ERR_STORE_UNAVAILABLE'), String(err));
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    assert.ok(ok, 'the API recovered');
    // The watch-fed cache caught up too: a user created now can log in at once.
    await root.api.apply([{ kind: 'User', metadata: { name: 'late' }, spec: { type: 'HUMAN' } }]);
    const cred = await root.api.createCredential({ user: 'late', type: 'auth-token' });
    const late = await clientFor(tc, cred.token);
    assert.equal((await late.api.status()).user?.metadata?.name, 'late');
    late.api.close();
    const names = (await root.api.list('Group')).items.map((g) => g.metadata.name);
    assert.ok(names.includes('before') && names.includes('after') && !names.includes('while-down'));
  });
});
