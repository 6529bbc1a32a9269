import { PosternError, canonicalName, type AnyResource } from '@postern/apis';
import { httpRequest, type Decision } from '@postern/policy';
import type { ProxyCore } from './handler.js';
import type { Caller } from './identity.js';
import { normalizeTarget } from './normalize.js';
import { rewritePath } from './routes.js';

export interface ExplainInput {
  service: string;
  user: string;
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: Buffer;
  /** CLIENT (tunnel; default) or CLIENTLESS (public listener with a token). */
  sessionType?: 'CLIENT' | 'CLIENTLESS';
}

export interface Explanation {
  decision: Decision;
  config?: string;
  upstreams: string[];
  upstreamPath?: string;
}

/**
 * The decision the proxy would make for a described request, with every rule in evaluation
 * order — computed by the same code as a live request, on a stand-in ACTIVE session of the user
 * (so session- and device-attached policies are not part of it).
 */
export function explainRequest(core: ProxyCore, cache: { get(kind: string, name: string): AnyResource | undefined }, input: ExplainInput, now: Date): Explanation {
  const svc = core.service(canonicalName('Service', input.service));
  if (!svc) throw new PosternError('ERR_NOT_FOUND', `Service "${input.service}" not found`);
  const user = cache.get('User', input.user);
  if (!user) throw new PosternError('ERR_NOT_FOUND', `User "${input.user}" not found`);
  const target = normalizeTarget(input.path ?? '/');
  if (!target.ok) throw new PosternError('ERR_INVALID_VALUE', `the path would be refused with 400: ${target.reason}`);
  const groups = ((user.spec as { groups?: string[] }).groups ?? []).flatMap((g) => cache.get('Group', g) ?? []);
  const session: AnyResource = {
    kind: 'Session',
    metadata: { name: `${user.metadata.name}-explain` },
    spec: { state: 'ACTIVE', expiresAt: new Date(now.getTime() + 3_600_000).toISOString() },
    status: { userRef: { name: user.metadata.name, uid: user.metadata.uid }, type: input.sessionType ?? 'CLIENT' },
  };
  const caller: Caller = { session, user, groups, via: input.sessionType === 'CLIENTLESS' ? 'token' : 'tunnel-ip' };
  const headers = Object.fromEntries(Object.entries(input.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  const http = httpRequest({
    method: (input.method ?? 'GET').toUpperCase(),
    path: target.path,
    query: target.query,
    host: headers.host ?? '',
    scheme: input.sessionType === 'CLIENTLESS' ? 'https' : 'http',
    headers,
    size: input.body?.length ?? 0,
    body: input.body,
  });
  const ctx = core.context(svc, caller, http);
  const decision = core.authorize(svc, caller, ctx, true);
  if (decision.effect !== 'ALLOW') return { decision, upstreams: [] };
  const route = core.route(svc, ctx);
  if (!route) return { decision, upstreams: [] };
  return { decision, config: route.name, upstreams: route.endpoints.map((e) => e.user ? `client of user ${e.user}` : e.url.origin), upstreamPath: rewritePath(target.path, route) };
}
