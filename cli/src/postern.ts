import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { PosternError, isPosternError } from '@postern/apis';
import { encodeYaml } from '@postern/apis';
import { loadSession, removeSession, resolveDomain, saveSession } from './config.js';
import { notImplemented, program, run } from './command.js';
import type { Io } from './io.js';
import { parseOutput, table, until } from './output.js';
import { clientFor, connect } from './session.js';
import { caFingerprint, fetchClusterCa } from './tofu.js';

/** `postern`: the client CLI (login, logout, status, get service; connect arrives with tunnels). */
export async function main(argv: readonly string[], io: Io): Promise<number> {
  const p = program('postern', 'Postern client: log in to a cluster and reach its Services.', io);
  p.option('--domain <domain>', 'cluster domain (default: $POSTERN_DOMAIN, or the only one logged in to)');
  const domainOf = () => p.opts<{ domain?: string }>().domain;

  p.command('login')
    .description('log in to a cluster and keep the session under your config folder (0600)')
    .option('--auth-token <token>', 'an auth token from `posternctl create credential` or `posternd init`')
    .option('--api <host:port>', 'API address (default: api.<domain>:443)')
    .option('--ca <file>', 'PEM file of the cluster CA to trust, instead of trusting on first use')
    .option('--web', 'log in with the browser (OIDC)')
    .option('--assertion <token>', 'log in with a workload identity token')
    .action(async (o: { authToken?: string; api?: string; ca?: string; web?: boolean; assertion?: string }) => {
      const domain = domainOf() ?? io.env.POSTERN_DOMAIN;
      if (!domain) throw new PosternError('ERR_USAGE', 'login needs --domain (or POSTERN_DOMAIN)');
      if (o.web || o.assertion) notImplemented('login with the browser (OIDC) or a workload assertion', 'use --auth-token for now');
      const token = o.authToken ?? io.env.POSTERN_AUTH_TOKEN;
      if (!token) throw new PosternError('ERR_USAGE', 'login needs --auth-token <token> (browser login is not available yet)');
      const previous = loadSession(io, domain);
      const api = o.api ?? io.env.POSTERN_API ?? previous?.api ?? `api.${domain}:443`;
      let ca: string;
      if (o.ca) {
        ca = readFileSync(resolve(io.cwd, o.ca), 'utf8');
      } else {
        const fetched = await fetchClusterCa(api);
        if (previous && previous.api === api && previous.caFingerprint !== fetched.fingerprint) {
          throw new PosternError(
            'ERR_TLS_PIN_MISMATCH',
            `the cluster at ${api} presents CA ${fetched.fingerprint}, but ${previous.caFingerprint} was pinned at the last login. If the cluster was re-created on purpose, run \`postern logout --domain ${domain}\` first or pass --ca FILE`,
          );
        }
        if (!previous || previous.caFingerprint !== fetched.fingerprint) io.err(`Trusting the cluster CA ${fetched.fingerprint} (first use; posternd printed its fingerprint at start)\n`);
        ca = fetched.pem;
      }
      const client = clientFor({ api, ca, domain });
      try {
        const t = await client.authenticateWithAuthToken(token);
        saveSession(io, {
          domain,
          api,
          ca,
          caFingerprint: caFingerprint(ca),
          accessToken: t.accessToken,
          refreshToken: t.refreshToken,
          accessTokenExpiresAt: new Date(Date.now() + t.expiresIn * 1000).toISOString(),
          sessionName: t.sessionName,
        });
        const authed = clientFor({ api, ca, domain }, () => t.accessToken);
        try {
          const st = await authed.status();
          io.out(`Logged in to ${domain} as ${String(st.user?.metadata?.name)} (session ${t.sessionName}).\n`);
        } finally {
          authed.close();
        }
      } finally {
        client.close();
      }
    });

  p.command('logout')
    .description('end the session on the cluster and forget it here')
    .action(async () => {
      const domain = resolveDomain(io, domainOf());
      const saved = loadSession(io, domain);
      if (!saved) throw new PosternError('ERR_NOT_LOGGED_IN', `not logged in to ${domain}`);
      const conn = connect(io, domain);
      try {
        await conn.call((c) => c.logout());
      } catch (err) {
        // A session that already ended on the cluster is still forgotten here.
        if (!isPosternError(err) || !['ERR_TOKEN_INVALID', 'ERR_TOKEN_EXPIRED', 'ERR_NOT_LOGGED_IN'].includes(err.code)) throw err;
      } finally {
        conn.close();
      }
      removeSession(io, domain);
      io.out(`Logged out of ${domain}.\n`);
    });

  p.command('status')
    .description('who you are on the cluster, and your session')
    .option('-o, --output <format>', 'table, yaml or json')
    .action(async (o: { output?: string }) => {
      const format = parseOutput(o.output);
      const conn = connect(io, domainOf());
      try {
        const st = await conn.call((c) => c.status());
        const session = st.session as { metadata?: { name?: string }; spec?: { expiresAt?: string }; status?: { type?: string; authentication?: { accessTokenExpiresAt?: string } } };
        const summary = {
          domain: conn.session.domain,
          api: conn.session.api,
          user: (st.user as { metadata?: { name?: string } }).metadata?.name,
          userType: (st.user as { spec?: { type?: string } }).spec?.type,
          groups: st.groups,
          session: session.metadata?.name,
          sessionType: session.status?.type,
          sessionExpiresAt: session.spec?.expiresAt,
          accessTokenExpiresAt: conn.session.accessTokenExpiresAt,
          connected: false,
        };
        if (format === 'json') io.out(JSON.stringify(summary, null, 2) + '\n');
        else if (format === 'yaml') io.out(encodeYaml([summary]));
        else {
          io.out(
            table(
              ['FIELD', 'VALUE'],
              [
                ['Domain', summary.domain],
                ['API', summary.api],
                ['User', `${summary.user} (${summary.userType})`],
                ['Groups', summary.groups.join(', ') || '-'],
                ['Session', `${summary.session} (${summary.sessionType}), ends ${until(summary.sessionExpiresAt)}`],
                ['Access token', `expires ${until(summary.accessTokenExpiresAt)}`],
                ['Tunnel', 'not connected'],
              ],
            ),
          );
        }
      } finally {
        conn.close();
      }
    });

  const get = p.command('get').description('list what you can reach');
  get
    .command('service [name]')
    .alias('services')
    .alias('svc')
    .description('the Services your policies let you reach')
    .option('-n, --namespace <ns>', 'only this namespace')
    .option('-o, --output <format>', 'table, yaml or json')
    .action(async (name: string | undefined, o: { namespace?: string; output?: string }) => {
      const format = parseOutput(o.output);
      const conn = connect(io, domainOf());
      try {
        let items = await conn.call((c) => c.listServices(o.namespace ?? ''));
        if (name) {
          const [svc, ns] = name.split('.');
          items = items.filter((s) => s.name === svc && (!ns || s.namespace === ns));
          if (items.length === 0) throw new PosternError('ERR_NOT_FOUND', `no Service "${name}" that you may reach`);
        }
        if (format === 'json') io.out(JSON.stringify(name ? items[0] : { items }, null, 2) + '\n');
        else if (format === 'yaml') io.out(encodeYaml(name ? items : [{ items }]));
        else if (items.length === 0) io.err('No Services you may reach.\n');
        else io.out(table(['NAME', 'NAMESPACE', 'MODE', 'PORT', 'PRIVATE HOSTNAME', 'PUBLIC HOSTNAME'], items.map((s) => [s.name, s.namespace, s.mode, String(s.port || '-'), s.privateHostname, s.publicHostname || '-'])));
      } finally {
        conn.close();
      }
    });

  p.command('connect')
    .description('open a tunnel to the cluster (WireGuard or QUIC)')
    .allowUnknownOption()
    .allowExcessArguments()
    .action(() => notImplemented('`postern connect` (tunnels)', 'it arrives with the WireGuard overlay work'));
  p.command('disconnect')
    .description('close the tunnel')
    .action(() => notImplemented('`postern disconnect` (tunnels)', 'it arrives with the WireGuard overlay work'));

  return run(p, argv, io);
}
