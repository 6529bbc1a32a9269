import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { postern, posternctl, type Io } from '@postern/cli';
import { ApiClient } from '@postern/apiserver';
import { startCluster, type RunningCluster } from '@postern/cluster';
import { pino } from 'pino';

export interface CliResult {
  code: number;
  out: string;
  err: string;
}

export interface TestCluster {
  cluster: RunningCluster;
  dir: string;
  domain: string;
  /** Runs `postern` or `posternctl` in-process as the person whose config folder is `who`. */
  cli(which: 'postern' | 'posternctl', args: string[], opts?: { who?: string; stdin?: string; cwd?: string }): Promise<CliResult>;
  /** Logs `who` in with an auth token (root's by default). */
  login(who: string, token?: string): Promise<void>;
  /** Makes a user able to log in: an auth-token credential created by root, then login. */
  loginAs(user: string): Promise<void>;
  /**
   * A CLIENT session for `user` (through a real auth token and the Auth API), marked connected
   * with tunnel address `address`, as the WireGuard connect of the overlay will do. Resolves when
   * the proxy knows the address. Returns the session's access token too.
   */
  connectedSession(user: string, address: string): Promise<{ session: string; accessToken: string }>;
  /** An ACCESS_TOKEN credential's token for `user` (a CLIENTLESS session, for public Services). */
  accessToken(user: string): Promise<string>;
  stop(): Promise<void>;
}

/** An in-process single-node cluster on a random loopback port, with TLS, for tests. */
export async function startTestCluster(opts: { database?: string; domain?: string; now?: () => Date; logLines?: string[]; upstreamTimeoutMs?: number } = {}): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-test-'));
  const domain = opts.domain ?? 'example.test';
  const cluster = await startCluster({
    domain,
    ...(opts.database ? { database: opts.database } : { dataDir: join(dir, 'data') }),
    listen: '127.0.0.1:0',
    publicListen: '127.0.0.1:0',
    autoInit: true,
    logger: opts.logLines
      ? pino({ level: 'info' }, { write: (line: string) => void opts.logLines!.push(line) })
      : pino({ level: process.env.POSTERN_TEST_LOG ?? 'silent' }),
    ...(opts.upstreamTimeoutMs ? { upstreamTimeoutMs: opts.upstreamTimeoutMs } : {}),
    ...(opts.now ? { now: opts.now } : {}),
  });
  const cli: TestCluster['cli'] = async (which, args, o = {}) => {
    let out = '';
    let err = '';
    const io: Io = {
      out: (t) => void (out += t),
      err: (t) => void (err += t),
      env: { POSTERN_CONFIG_DIR: join(dir, 'home', o.who ?? 'root'), POSTERN_DOMAIN: domain },
      cwd: o.cwd ?? dir,
      home: join(dir, 'home', o.who ?? 'root'),
      isTTY: false,
      readStdin: async () => {
        const chunks: Buffer[] = [];
        for await (const c of Readable.from([Buffer.from(o.stdin ?? '')])) chunks.push(c as Buffer);
        return Buffer.concat(chunks).toString('utf8');
      },
    };
    const code = await (which === 'postern' ? postern : posternctl)(args, io);
    return { code, out, err };
  };
  const login = async (who: string, token = cluster.rootToken) => {
    if (!token) throw new Error('no token to log in with');
    const r = await cli('postern', ['login', '--domain', domain, '--api', cluster.address, '--auth-token', token], { who });
    if (r.code !== 0) throw new Error(`login as ${who} failed: ${r.err}`);
  };
  return {
    cluster,
    dir,
    domain,
    cli,
    login,
    loginAs: async (user: string) => {
      const r = await cli('posternctl', ['create', 'credential', '--user', user, '--type', 'auth-token']);
      if (r.code !== 0) throw new Error(`create credential for ${user} failed: ${r.err}`);
      await login(user, r.out.trim());
    },
    connectedSession: async (user, address) => {
      const cred = await cli('posternctl', ['create', 'credential', '--user', user, '--type', 'auth-token']);
      if (cred.code !== 0) throw new Error(cred.err);
      const api = new ApiClient({ address: cluster.address, ca: cluster.caPem!, serverName: `api.${domain}` });
      const t = await api.authenticateWithAuthToken(cred.out.trim());
      api.close();
      const store = cluster.store;
      const s = (await store.get('Session', t.sessionName))!;
      await store.update({
        ...s,
        status: { ...s.status, isConnected: true, connection: { addresses: [address], type: 'WIREGUARD', startedAt: new Date().toISOString() } },
      });
      for (let i = 0; i < 200 && !cluster.proxy!.core.identity.byAddress(address); i++) await new Promise((r) => setTimeout(r, 5));
      if (!cluster.proxy!.core.identity.byAddress(address)) throw new Error(`the proxy never saw ${address}`);
      return { session: t.sessionName, accessToken: t.accessToken };
    },
    accessToken: async (user) => {
      const cred = await cli('posternctl', ['create', 'credential', '--user', user, '--type', 'access-token']);
      if (cred.code !== 0) throw new Error(cred.err);
      return cred.out.trim();
    },
    stop: async () => {
      await cluster.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
