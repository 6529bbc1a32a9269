import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { PosternError, canonicalName, kindFromAlias, kinds, type AnyResource } from '@postern/apis';
import { locateServerIssues, readApplyInput } from './apply-input.js';
import { notImplemented, program, run } from './command.js';
import type { Io } from './io.js';
import { parseOutput, printResources, table } from './output.js';
import type { ExplainResponse } from '@postern/apiserver/client';
import { connect } from './session.js';

function kindOf(word: string) {
  const k = kindFromAlias(word);
  if (!k) throw new PosternError('ERR_UNKNOWN_KIND', `unknown kind "${word}" (one of ${kinds.map((x) => x.toLowerCase()).join(', ')})`);
  return k;
}

/** `30d`, `12h`, `90m`, `45s`, `2w` → milliseconds. */
export function parseDurationFlag(v: string): number {
  const m = v.match(/^(\d+)(s|m|h|d|w)$/);
  if (!m) throw new PosternError('ERR_USAGE', `"${v}" is not a duration like 30d, 12h, 90m`);
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[m[2] as 's']!;
}

/** `posternctl`: the admin CLI (apply, get, delete, create). */
export async function main(argv: readonly string[], io: Io): Promise<number> {
  const p = program('posternctl', 'Postern admin CLI: manage the resources of a cluster.', io);
  p.option('--domain <domain>', 'cluster domain (default: $POSTERN_DOMAIN, or the only one logged in to)');
  const withConn = async <T>(fn: (conn: ReturnType<typeof connect>) => Promise<T>): Promise<T> => {
    const conn = connect(io, p.opts<{ domain?: string }>().domain);
    try {
      return await fn(conn);
    } finally {
      conn.close();
    }
  };

  p.command('apply [paths...]')
    .description('create or update resources from YAML/JSON files, folders (recursively) or - (stdin); all or nothing')
    .option('-f, --filename <path...>', 'same as the positional paths')
    .option('--dry-run', 'validate and show what would change, write nothing')
    .option('--prune', 'also delete resources of the applied kinds that the input does not hold (never those posternd made)')
    .action(async (paths: string[], o: { filename?: string[]; dryRun?: boolean; prune?: boolean }) => {
      const all = [...paths, ...(o.filename ?? [])];
      if (all.length === 0) throw new PosternError('ERR_USAGE', 'apply needs a file, a folder or - (stdin)');
      const input = await readApplyInput(io, all);
      await withConn(async (conn) => {
        let results;
        try {
          results = await conn.call((c) => c.apply(input.resources, { dryRun: !!o.dryRun, prune: !!o.prune }));
        } catch (err) {
          throw locateServerIssues(err, input);
        }
        const suffix = o.dryRun ? ' (dry run)' : '';
        for (const r of results) io.out(`${r.kind.toLowerCase()}/${r.name} ${r.action}${suffix}\n`);
      });
    });

  p.command('get <kind> [name]')
    .description(`show resources: ${kinds.map((k) => k.toLowerCase()).join(', ')}`)
    .option('-o, --output <format>', 'table, yaml or json', 'table')
    .option('-n, --namespace <ns>', 'Services of one namespace')
    .option('-l, --selector <selector>', 'label selector, e.g. env=prod,team')
    .action(async (kindWord: string, name: string | undefined, o: { output: string; namespace?: string; selector?: string }) => {
      const kind = kindOf(kindWord);
      const format = parseOutput(o.output);
      await withConn(async (conn) => {
        if (name) {
          const full = o.namespace && !name.includes('.') ? `${name}.${o.namespace}` : canonicalName(kind, name);
          const r = await conn.call((c) => c.get(kind, full));
          printResources(io, kind, [r], format, true);
        } else {
          const res = await conn.call((c) => c.list(kind, { ...(o.selector ? { labelSelector: o.selector } : {}), ...(o.namespace ? { namespace: o.namespace } : {}) }));
          printResources(io, kind, res.items, format, false);
        }
      });
    });

  p.command('delete <kind> <name>')
    .description('delete a resource (deleting a Session revokes it at once)')
    .action(async (kindWord: string, name: string) => {
      const kind = kindOf(kindWord);
      await withConn(async (conn) => {
        const r = await conn.call((c) => c.delete(kind, canonicalName(kind, name)));
        io.out(`${kind.toLowerCase()}/${r.metadata.name} deleted\n`);
      });
    });

  const create = p.command('create').description('create a Secret or a Credential');
  create
    .command('secret <name>')
    .description('create a Secret; its value is never shown again')
    .option('--value <value>', 'the value (visible in your shell history: prefer --file)')
    .option('--file <file>', 'read the value from a file, or - for stdin')
    .action(async (name: string, o: { value?: string; file?: string }) => {
      if ((o.value === undefined) === (o.file === undefined)) throw new PosternError('ERR_USAGE', 'create secret takes exactly one of --value or --file');
      const value = o.value ?? (o.file === '-' ? await io.readStdin() : readFileSync(resolve(io.cwd, o.file!), 'utf8'));
      const secret: AnyResource = { kind: 'Secret', metadata: { name }, spec: { data: { value } } };
      await withConn(async (conn) => {
        await conn.call((c) => c.create(secret));
        io.out(`secret/${name} created\n`);
      });
    });
  create
    .command('credential')
    .description('create a Credential and print its token once')
    .requiredOption('--user <user>', 'the User it authenticates')
    .requiredOption('--type <type>', 'auth-token, access-token or oauth2')
    .option('--name <name>', 'name (default: generated)')
    .option('--expire-in <duration>', 'lifetime such as 30d, 12h (default: 1 year)', '365d')
    .option('--max-authentications <n>', 'how many logins it allows (auth-token; default: unlimited)')
    .option('--session-type <type>', 'CLIENT or CLIENTLESS sessions (default: CLIENT for auth-token)')
    .action(async (o: { user: string; type: string; name?: string; expireIn: string; maxAuthentications?: string; sessionType?: string }) => {
      const expiresAt = new Date(Date.now() + parseDurationFlag(o.expireIn)).toISOString();
      const max = o.maxAuthentications !== undefined ? Number(o.maxAuthentications) : 0;
      if (!Number.isInteger(max) || max < 0) throw new PosternError('ERR_USAGE', '--max-authentications takes a whole number');
      if (o.type.toLowerCase() === 'oauth2') notImplemented('OAuth2 client-credential Credentials', 'use auth-token or access-token');
      await withConn(async (conn) => {
        const res = await conn.call((c) =>
          c.createCredential({ user: o.user, type: o.type, expiresAt, maxAuthentications: max, ...(o.name ? { name: o.name } : {}), ...(o.sessionType ? { sessionType: o.sessionType.toUpperCase() } : {}) }),
        );
        io.err(`credential/${res.credential.metadata.name} created for user ${o.user}; the token is shown only now:\n`);
        io.out(`${res.token}\n`);
      });
    });

  p.command('explain')
    .description('show the proxy\'s decision for a request, rule by rule, without sending it')
    .requiredOption('--service <svc>', 'the Service, svc or svc.ns')
    .requiredOption('--user <user>', 'the User making the request')
    .option('--method <method>', 'HTTP method', 'GET')
    .option('--path <path>', 'request path (normalised as the proxy would)', '/')
    .option('--header <k=v...>', 'a request header; repeat for more')
    .option('--body <file>', 'a file with the request body (- for stdin)')
    .option('--clientless', 'as a CLIENTLESS session on the public listener (default: through a tunnel)')
    .option('-o, --output <format>', 'table or json', 'table')
    .action(async (o: { service: string; user: string; method: string; path: string; header?: string[]; body?: string; clientless?: boolean; output: string }) => {
      const headers: Record<string, string> = {};
      for (const h of o.header ?? []) {
        const i = h.indexOf('=');
        if (i <= 0) throw new PosternError('ERR_USAGE', `--header takes key=value, not "${h}"`);
        headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1);
      }
      const body = o.body === undefined ? undefined : Buffer.from(o.body === '-' ? await io.readStdin() : readFileSync(resolve(io.cwd, o.body), 'utf8'));
      await withConn(async (conn) => {
        const ex = await conn.call((c) => c.explain({ service: o.service, user: o.user, method: o.method, path: o.path, headers, ...(body ? { body } : {}), sessionType: o.clientless ? 'CLIENTLESS' : 'CLIENT' }));
        if (o.output === 'json') return io.out(JSON.stringify(ex, null, 2) + '\n');
        io.out(explainText(o, ex));
      });
    });

  return run(p, argv, io);
}

/** The human form of an explanation: the decision, the route, then every rule in order. */
function explainText(o: { service: string; user: string; method: string; path: string }, ex: ExplainResponse): string {
  const r = (ex.reason ?? {}) as { type?: string; policy?: string; rule?: string; priority?: number; attachedTo?: string; detail?: string };
  const why =
    r.type === 'RULE' ? `rule "${r.rule}" of policy "${r.policy}" on ${r.attachedTo} (priority ${r.priority})`
    : r.type === 'PRE_CHECK' ? `pre-check ${r.detail}`
    : r.type === 'CEL_ERROR' ? `CEL error in rule "${r.rule}" of "${r.policy}": ${r.detail}`
    : 'no rule matched (deny by default)';
  const lines = [`${o.method.toUpperCase()} ${o.path} to ${o.service} by ${o.user}`, `Decision: ${ex.effect}, by ${why}`];
  if (ex.effect === 'ALLOW') {
    lines.push(ex.config ? `Route:    config "${ex.config}" to ${ex.upstreams.join(', ')}, path ${ex.upstreamPath}` : 'Route:    none matches (the proxy would answer 404)');
  }
  lines.push('');
  if (ex.rules.length === 0) return `${lines.join('\n')}No rules were evaluated.\n`;
  lines.push('Rules in evaluation order (priority, then DENY before ALLOW, then attachment order):');
  const decider = ex.rules.findIndex((x) => x.result === 'matched' || x.result === 'error');
  const rows = ex.rules.map((x, i) => [String(i + 1), String(x.priority), x.effect, x.policy, x.attachedTo, x.rule, `${x.result}${x.error ? ` (${x.error})` : ''}${i === decider ? '  <- decides' : ''}`]);
  return `${lines.join('\n')}\n${table(['#', 'PRIORITY', 'EFFECT', 'POLICY', 'ATTACHED TO', 'RULE', 'RESULT'], rows)}`;
}
