import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { runBin, spawnPosternd, type RunningPosternd } from '../harness/index.js';

const examples = join(import.meta.dirname, '../../../../shared/examples');
const domain = 'example.test';

/**
 * The README's path, with the real binaries: `posternd up` in a temp folder, `postern login`
 * with the printed token, `posternctl apply` of every shared example, `get`, and a user whom no
 * policy allows anything getting PermissionDenied.
 */
describe('end to end: posternd up → login → apply → get → deny', () => {
  let dir: string;
  let d: RunningPosternd;
  const as = (who: string) => ({ cwd: dir, env: { POSTERN_CONFIG_DIR: join(dir, 'home', who), POSTERN_DOMAIN: '' } });
  const ctl = (args: string[], who = 'root', stdin?: string) => runBin('posternctl', ['--domain', domain, ...args], { ...as(who), ...(stdin !== undefined ? { stdin } : {}) });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'postern-e2e-'));
    d = await spawnPosternd(['up', '--domain', domain, '--listen', '127.0.0.1:0', '--public-listen', '127.0.0.1:0'], { cwd: dir });
  });
  after(async () => {
    const code = await d?.stop();
    assert.equal(code, 0, 'posternd exits cleanly on SIGTERM');
    assert.match(d.logs(), /Stopping \(SIGTERM\)[^\n]*\n(.*\n)*Stopped\.\n/, 'posternd says that it stops, and when it has');
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints a one-time root token and the CA fingerprint, and keeps its data under ./.postern', () => {
    assert.ok(d.rootToken);
    assert.match(d.caFingerprint ?? '', /^SHA256:([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.ok(statSync(join(dir, '.postern')).isDirectory());
    assert.match(d.stdout, /postern login --domain example\.test/);
  });

  it('logs root in, pinning the CA, with tokens saved 0600', async () => {
    const r = await runBin('postern', ['login', '--domain', domain, '--api', d.address, '--auth-token', d.rootToken!], as('root'));
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /Logged in to example\.test as root/);
    assert.ok(r.err.includes(d.caFingerprint!), 'login shows the fingerprint it pins');
    const file = join(dir, 'home', 'root', 'sessions', `${domain}.json`);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, 'home', 'root')).mode & 0o777, 0o700);
    const again = await runBin('postern', ['login', '--domain', domain, '--api', d.address, '--auth-token', d.rootToken!], as('other'));
    assert.equal(again.code, 1, 'the root token works for one login only');
    assert.match(again.err, /ERR_CREDENTIAL_EXHAUSTED/);
  });

  it('applies every example (after the Secret it needs), then re-applies unchanged', async () => {
    const s = await ctl(['create', 'secret', 'weather-token', '--value', 'sk-example']);
    assert.equal(s.code, 0, s.err);
    const first = await ctl(['apply', examples]);
    assert.equal(first.code, 0, first.err);
    const lines = first.out.trim().split('\n');
    assert.ok(lines.length >= 12);
    for (const want of ['service/inventory.default created', 'service/accounts.finance created', 'namespace/finance created', 'policy/ops-admin created', 'user/alice created']) {
      assert.ok(lines.includes(want), `${want} in\n${first.out}`);
    }
    const second = await ctl(['apply', examples]);
    assert.equal(second.code, 0, second.err);
    for (const line of second.out.trim().split('\n')) assert.match(line, / unchanged$/);
  });

  it('round-trips `get -o yaml` through apply unchanged, for every kind applied', async () => {
    for (const kind of ['service', 'user', 'group', 'policy', 'namespace', 'secret']) {
      const got = await ctl(['get', kind, '-o', 'yaml']);
      assert.equal(got.code, 0, got.err);
      const file = join(dir, `${kind}.yaml`);
      writeFileSync(file, got.out);
      const re = await ctl(['apply', file]);
      assert.equal(re.code, 0, `${kind}: ${re.err}`);
      for (const line of re.out.trim().split('\n')) assert.match(line, / unchanged$/, `${kind}: ${re.out}`);
    }
  });

  it('shows what was applied, and never a Secret value', async () => {
    const svc = await ctl(['get', 'svc']);
    assert.equal(svc.code, 0, svc.err);
    for (const name of ['inventory.default', 'catalog.default', 'weather.default', 'accounts.finance', 'signup.default']) assert.match(svc.out, new RegExp(`^${name.replace('.', '\\.')}\\s`, 'm'));
    // The port each is served on: inventory's own, the others' inferred (80 for HTTP), not a 0.
    assert.match(svc.out, /^catalog\.default\s+HTTP\s+80\s+yes\s/m);
    const one = await ctl(['get', 'service', 'inventory', '-o', 'json']);
    assert.equal(JSON.parse(one.out).spec.config.upstream.url, 'http://127.0.0.1:9101');
    const secret = await ctl(['get', 'secret', 'weather-token', '-o', 'json']);
    assert.equal(secret.code, 0);
    assert.ok(!secret.out.includes('sk-example'));
    assert.equal(JSON.parse(secret.out).spec.data, undefined);
    const users = parse((await ctl(['get', 'user', 'alice', '-o', 'yaml'])).out) as { spec: { groups: string[] } };
    assert.deepEqual(users.spec.groups, ['ops', 'dev']);
  });

  it('denies a user whom no policy allows anything', async () => {
    const cred = await ctl(['create', 'credential', '--user', 'bob', '--type', 'auth-token']);
    assert.equal(cred.code, 0, cred.err);
    const login = await runBin('postern', ['login', '--domain', domain, '--api', d.address, '--auth-token', cred.out.trim()], as('bob'));
    assert.equal(login.code, 0, login.err);
    const get = await ctl(['get', 'service'], 'bob');
    assert.equal(get.code, 1);
    assert.match(get.err, /ERR_PERMISSION_DENIED/);
    assert.ok(!/ops-admin|root-core-api/.test(get.err), 'the denial names no policy');
    const apply = await ctl(['apply', '-'], 'bob', 'kind: Group\nmetadata: {name: sneaky}\n');
    assert.equal(apply.code, 1);
    assert.match(apply.err, /ERR_PERMISSION_DENIED/);
    // bob may still use the User API about himself.
    const status = await runBin('postern', ['status', '-o', 'json', '--domain', domain], as('bob'));
    assert.equal(status.code, 0, status.err);
    assert.equal(JSON.parse(status.out).user, 'bob');
    const reach = await runBin('postern', ['get', 'service', '-o', 'json', '--domain', domain], as('bob'));
    const items = (JSON.parse(reach.out) as { items: { name: string; port: number }[] }).items;
    assert.ok(items.every((s) => s.port === 80), `every example Service is served on port 80: ${reach.out}`);
    const names = items.map((s) => s.name).sort();
    // dev reaches inventory; catalog and signup allow anyone; accounts allows any GET; weather wants a WORKLOAD or ops.
    assert.deepEqual(names, ['accounts', 'catalog', 'inventory', 'signup']);
  });

  it('rejects a bad file with file:line and field, writing nothing', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'kind: Group\nmetadata: {name: fine-group}\n---\nkind: Service\nmetadata: {name: broken}\nspec:\n  mode: HTTP\n  prot: 80\n  config: {upstream: {url: "http://127.0.0.1:1"}}\n');
    const r = await ctl(['apply', bad]);
    assert.equal(r.code, 1);
    assert.match(r.err, /bad\.yaml:8:3: spec\.prot: unknown field "prot"; did you mean "port"\? \[ERR_UNKNOWN_FIELD\]/);
    const g = await ctl(['get', 'group', 'fine-group']);
    assert.equal(g.code, 1, 'the valid document in the same file was not applied either');
    assert.match(g.err, /ERR_NOT_FOUND/);
    const missing = join(dir, 'missing.yaml');
    writeFileSync(missing, 'kind: Group\nmetadata: {name: g2}\n---\nkind: Service\nmetadata: {name: needs-secret}\nspec:\n  config:\n    upstream: {url: "http://127.0.0.1:1"}\n    http:\n      auth:\n        bearer: {fromSecret: no-such-secret}\n');
    const m = await ctl(['apply', missing]);
    assert.equal(m.code, 1);
    assert.match(m.err, /missing\.yaml:11:\d+: spec\.config\.http\.auth\.bearer\.fromSecret: Secret "no-such-secret" does not exist.*\[ERR_MISSING_REFERENCE\]/);
    assert.equal((await ctl(['get', 'group', 'g2'])).code, 1);
  });

  it('refreshes an expired access token by itself and rotates the refresh token', async () => {
    const file = join(dir, 'home', 'root', 'sessions', `${domain}.json`);
    const saved = JSON.parse(readFileSync(file, 'utf8')) as { accessTokenExpiresAt: string; refreshToken: string };
    const oldRefresh = saved.refreshToken;
    writeFileSync(file, JSON.stringify({ ...saved, accessTokenExpiresAt: new Date(0).toISOString() }), { mode: 0o600 });
    const r = await ctl(['get', 'user']);
    assert.equal(r.code, 0, r.err);
    const after = JSON.parse(readFileSync(file, 'utf8')) as { refreshToken: string };
    assert.notEqual(after.refreshToken, oldRefresh);
  });
});
