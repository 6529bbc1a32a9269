import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCluster } from '@postern/cluster';
import { pino } from 'pino';
import { startTestCluster, type TestCluster } from '../harness/index.js';

/** The CLIs run in-process (`main(argv, io)`) against a real in-process cluster with TLS. */
describe('CLI behaviour', () => {
  let tc: TestCluster;
  before(async () => {
    tc = await startTestCluster();
    await tc.login('root');
  });
  after(async () => tc.stop());

  it('applies from stdin, dry-runs without writing, and reports one line per resource', async () => {
    const doc = 'kind: Group\nmetadata: {name: from-stdin}\n';
    const dry = await tc.cli('posternctl', ['apply', '-', '--dry-run'], { stdin: doc });
    assert.equal(dry.code, 0, dry.err);
    assert.equal(dry.out, 'group/from-stdin created (dry run)\n');
    assert.equal((await tc.cli('posternctl', ['get', 'group', 'from-stdin'])).code, 1);
    const real = await tc.cli('posternctl', ['apply', '-f', '-'], { stdin: doc });
    assert.equal(real.out, 'group/from-stdin created\n');
    const again = await tc.cli('posternctl', ['apply', '-f', '-'], { stdin: doc });
    assert.equal(again.out, 'group/from-stdin unchanged\n');
  });

  it('prints JSON and YAML that parse, and a table on stdout only', async () => {
    const json = await tc.cli('posternctl', ['get', 'user', 'root', '-o', 'json']);
    assert.equal(JSON.parse(json.out).metadata.name, 'root');
    const list = await tc.cli('posternctl', ['get', 'users', '-o', 'json']);
    assert.equal(JSON.parse(list.out).kind, 'List');
    const table = await tc.cli('posternctl', ['get', 'usr']);
    assert.match(table.out, /^NAME\s+TYPE\s+EMAIL\s+GROUPS\s+AGE\n/);
    assert.equal(table.err, '');
  });

  it('explains usage mistakes and unknown kinds with exit code 1', async () => {
    const unknown = await tc.cli('posternctl', ['get', 'widgets']);
    assert.equal(unknown.code, 1);
    assert.match(unknown.err, /unknown kind "widgets".*\[ERR_UNKNOWN_KIND\]/);
    const noArgs = await tc.cli('posternctl', ['apply']);
    assert.equal(noArgs.code, 1);
    assert.match(noArgs.err, /ERR_USAGE/);
    const bothValues = await tc.cli('posternctl', ['create', 'secret', 's', '--value', 'a', '--file', 'b']);
    assert.match(bothValues.err, /exactly one of --value or --file/);
    const help = await tc.cli('posternctl', ['--help']);
    assert.equal(help.code, 0);
    assert.match(help.out, /apply/);
  });

  it('fails loudly for what is not built yet', async () => {
    const c = await tc.cli('postern', ['connect', '--tunnel-mode', 'quic']);
    assert.equal(c.code, 1);
    assert.match(c.err, /not implemented yet.*\[ERR_NOT_IMPLEMENTED\]/);
    const e = await tc.cli('posternctl', ['explain', '--service', 'x']);
    assert.equal(e.code, 1);
    assert.match(e.err, /required option '--user <user>'/);
  });

  it('reads a Secret value from a file and never prints it', async () => {
    const file = join(tc.dir, 'secret.txt');
    writeFileSync(file, 'file-secret-value');
    const r = await tc.cli('posternctl', ['create', 'secret', 'from-file', '--file', file]);
    assert.equal(r.code, 0, r.err);
    const yaml = await tc.cli('posternctl', ['get', 'secret', 'from-file', '-o', 'yaml']);
    assert.ok(!yaml.out.includes('file-secret-value'));
  });

  it('says who is logged in, and that nobody is after logout', async () => {
    const cred = await tc.cli('posternctl', ['create', 'credential', '--user', 'root', '--type', 'auth-token']);
    await tc.login('second', cred.out.trim());
    const st = await tc.cli('postern', ['status', '-o', 'json'], { who: 'second' });
    assert.equal(JSON.parse(st.out).user, 'root');
    const out = await tc.cli('postern', ['logout'], { who: 'second' });
    assert.equal(out.code, 0, out.err);
    const after = await tc.cli('postern', ['status'], { who: 'second' });
    assert.equal(after.code, 1);
    assert.match(after.err, /not logged in.*\[ERR_NOT_LOGGED_IN\]/);
    assert.equal((await tc.cli('postern', ['status'])).code, 0, 'the other session of root is untouched');
  });

  it('refuses a cluster whose CA differs from the one pinned at login', async () => {
    const other = await startCluster({ domain: tc.domain, dataDir: join(tc.dir, 'other'), listen: '127.0.0.1:0', publicListen: 'off', autoInit: true, logger: pino({ level: 'silent' }) });
    try {
      const saved = join(tc.dir, 'home', 'root', 'sessions', `${tc.domain}.json`);
      const before = readFileSync(saved, 'utf8');
      const r = await tc.cli('postern', ['login', '--domain', tc.domain, '--api', other.address, '--auth-token', other.rootToken!]);
      // A different address is a different cluster: trusted on first use, but said out loud.
      assert.equal(r.code, 0, r.err);
      assert.match(r.err, /Trusting the cluster CA/);
      writeFileSync(saved, before, { mode: 0o600 });
      const s = JSON.parse(before) as { api: string };
      writeFileSync(saved, JSON.stringify({ ...JSON.parse(before), api: other.address }), { mode: 0o600 });
      const pinned = await tc.cli('postern', ['login', '--domain', tc.domain, '--auth-token', 'x']);
      assert.equal(pinned.code, 1);
      assert.match(pinned.err, /\[ERR_TLS_PIN_MISMATCH\]/);
      writeFileSync(saved, JSON.stringify({ ...JSON.parse(before), api: s.api }), { mode: 0o600 });
    } finally {
      await other.close();
    }
  });

  it('refuses to open a data folder another posternd holds', async () => {
    await assert.rejects(
      startCluster({ domain: tc.domain, dataDir: join(tc.dir, 'data'), listen: '127.0.0.1:0', publicListen: 'off', autoInit: true, logger: pino({ level: 'silent' }) }),
      /another posternd \(pid \d+\) is using/,
    );
  });
});
