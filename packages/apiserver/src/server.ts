import { randomUUID } from 'node:crypto';
import { Server, ServerCredentials, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData, type Metadata } from '@grpc/grpc-js';
import { PosternError, canonicalName, kindInfo, kinds, servicePort, splitNamespaced, type AnyResource, type CredentialSpec } from '@postern/apis';
import type { AuthServer, Identity } from '@postern/authserver';
import { decide, gatherPolicies, preCheck } from '@postern/policy';
import type { ResourceCache, ResourceStore } from '@postern/store';
import type { Logger } from 'pino';
import { explainRequest, type ProxyCore } from '@postern/proxy';
import { AuthServiceService, type AuthServiceServer } from './gen/postern/auth/v1/auth.js';
import { CoreServiceService, type CoreServiceServer } from './gen/postern/core/v1/core.js';
import { UserServiceService, type UserServiceServer } from './gen/postern/user/v1/user.js';
import { ApiAuthorizer, describeDecision, groupsOf, requestContext, type GrpcRequestInfo } from './authz.js';
import { toServiceError } from './grpc-errors.js';
import { requireKind, ResourceService, sanitize } from './resources.js';
import { Tunnels, type ServiceInfo } from './tunnels.js';

export const coreServiceName = 'postern.core.v1.CoreService';
export const userServiceName = 'postern.user.v1.UserService';

/** The API server keeps every kind in memory: identities and policies for each call, the rest to serve reads (see ResourceService). */
export const apiCacheKinds = kinds;

export interface ApiServerOptions {
  store: ResourceStore;
  /** A started cache of `apiCacheKinds`. */
  cache: ResourceCache;
  auth: AuthServer;
  domain: string;
  logger: Logger;
  now?: () => Date;
  /** PEM key and certificate chain; without them the server speaks plaintext (tests on loopback only). */
  tls?: { key: string; cert: string };
  /** The proxy's core, for `Explain`; without it Explain answers ERR_NOT_IMPLEMENTED. */
  proxy?: ProxyCore;
  /** The cluster's IPv6 /64 prefix (four groups), for tunnel addresses. */
  ipv6Prefix: string;
}

type Unary<Req, Res> = (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void;

function bearer(md: Metadata): string | undefined {
  const v = md.get('authorization')[0]?.toString();
  const m = v?.match(/^Bearer\s+(.+)$/i);
  return m?.[1];
}

/** Resources to Struct-friendly JSON (drops undefined, which protobuf Struct cannot carry). */
const json = (r: unknown) => JSON.parse(JSON.stringify(r)) as { [key: string]: unknown };

/** The gRPC API server: Core API, User API and Auth API on one port. */
export class ApiServer {
  private readonly server = new Server({ 'grpc.max_receive_message_length': 64 * 1024 * 1024, 'grpc.max_send_message_length': 64 * 1024 * 1024 });
  private readonly resources: ResourceService;
  private readonly authorizer: ApiAuthorizer;
  private readonly now: () => Date;
  private readonly log: Logger;
  private readonly streams = new Set<{ close(): void }>();
  private readonly tunnels: Tunnels;

  constructor(private readonly opts: ApiServerOptions) {
    this.now = opts.now ?? (() => new Date());
    this.log = opts.logger;
    this.resources = new ResourceService(opts.store, opts.cache);
    this.authorizer = new ApiAuthorizer(opts.cache, this.now);
    this.tunnels = new Tunnels(opts.store, opts.cache, opts.domain, opts.ipv6Prefix, this.now, (identity) => this.servicesFor(identity, undefined));
    this.server.addService(CoreServiceService, this.core() as unknown as CoreServiceServer);
    this.server.addService(UserServiceService, this.user() as unknown as UserServiceServer);
    this.server.addService(AuthServiceService, this.authApi() as unknown as AuthServiceServer);
  }

  /** Binds `host:port` (port 0 picks one); resolves to the port bound. */
  async listen(address: string): Promise<number> {
    const creds = this.opts.tls
      ? ServerCredentials.createSsl(null, [{ private_key: Buffer.from(this.opts.tls.key), cert_chain: Buffer.from(this.opts.tls.cert) }], false)
      : ServerCredentials.createInsecure();
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, creds, (err, port) =>
        err ? reject(new PosternError('ERR_USAGE', `cannot listen on ${address} (${err.message}); is another posternd running there? Pick another address with --listen`)) : resolve(port),
      );
    });
  }

  async close(): Promise<void> {
    for (const s of this.streams) s.close();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private identify(md: Metadata): Identity {
    const token = bearer(md);
    if (!token) throw new PosternError('ERR_UNAUTHENTICATED', 'no access token: log in with `postern login` first');
    return this.opts.auth.verifyAccessToken(token);
  }

  /** Wraps a handler: request ID, identity, error mapping and one log line per call. */
  private unary<Req, Res>(service: string, method: string, fn: (req: Req, identity: Identity | undefined, rid: string, md: Metadata) => Promise<Res> | Res, needsIdentity = true): Unary<Req, Res> {
    return (call, callback) => {
      const rid = randomUUID();
      const started = performance.now();
      void (async () => {
        let user: string | undefined;
        try {
          const identity = needsIdentity ? this.identify(call.metadata) : undefined;
          user = identity?.user.metadata.name;
          const res = await fn(call.request, identity, rid, call.metadata);
          this.log.debug({ rid, service, method, user, ms: +(performance.now() - started).toFixed(2) }, 'api call');
          callback(null, res);
        } catch (err) {
          const known = err instanceof PosternError;
          const level = known ? 'info' : 'error';
          this.log[level]({ rid, service, method, user, code: known ? err.code : 'ERR_INTERNAL', err: known ? undefined : err }, known ? err.message : 'api call failed');
          callback(toServiceError(err, rid) as never, null);
        }
      })();
    };
  }

  private authorize(identity: Identity | undefined, rid: string, info: GrpcRequestInfo): void {
    this.authorizer.authorize(identity!, info, (d) => {
      if (d.effect !== 'ALLOW') this.log.info({ rid, user: identity!.user.metadata.name, grpc: info, decision: d.effect, reason: d.reason }, describeDecision(d));
    });
  }

  private core() {
    const s = coreServiceName;
    const authz = (identity: Identity | undefined, rid: string, method: string, kind: string, name: string) =>
      this.authorize(identity, rid, { service: s, method, resource: { kind, name } });
    return {
      create: this.unary(s, 'Create', async (req: { resource?: AnyResource; dryRun: boolean }, id, rid) => {
        const r = req.resource;
        const kind = requireKind(String(r?.kind ?? ''));
        authz(id, rid, 'Create', kind, canonicalName(kind, String(r?.metadata?.name ?? '')));
        return { resource: json(sanitize(await this.resources.create(r, req.dryRun))) };
      }),
      get: this.unary(s, 'Get', async (req: { kind: string; name: string }, id, rid) => {
        const kind = requireKind(req.kind);
        authz(id, rid, 'Get', kind, canonicalName(kind, req.name));
        return { resource: json(sanitize(await this.resources.get(kind, req.name))) };
      }),
      list: this.unary(s, 'List', async (req: { kind: string; labelSelector: string; namespace: string }, id, rid) => {
        const kind = requireKind(req.kind);
        authz(id, rid, 'List', kind, '');
        const res = await this.resources.list(kind, req.labelSelector || undefined, req.namespace || undefined);
        return { items: res.items.map((r) => json(sanitize(r))), resourceVersion: res.version };
      }),
      update: this.unary(s, 'Update', async (req: { resource?: AnyResource; dryRun: boolean }, id, rid) => {
        const r = req.resource;
        const kind = requireKind(String(r?.kind ?? ''));
        authz(id, rid, 'Update', kind, canonicalName(kind, String(r?.metadata?.name ?? '')));
        return { resource: json(sanitize(await this.resources.update(r, req.dryRun))) };
      }),
      delete: this.unary(s, 'Delete', async (req: { kind: string; name: string; resourceVersion: string }, id, rid) => {
        const kind = requireKind(req.kind);
        authz(id, rid, 'Delete', kind, canonicalName(kind, req.name));
        return { resource: json(sanitize(await this.resources.delete(kind, req.name, req.resourceVersion || undefined))) };
      }),
      apply: this.unary(s, 'Apply', async (req: { resources: unknown[]; dryRun: boolean; prune: boolean }, id, rid) => {
        const results = await this.resources.apply(req.resources, {
          dryRun: req.dryRun,
          prune: req.prune,
          authorize: (method, kind, name) => authz(id, rid, method, kind, name),
        });
        return { results };
      }),
      getSecretValue: this.unary(s, 'GetSecretValue', async (req: { name: string }, id, rid) => {
        authz(id, rid, 'GetSecretValue', 'Secret', req.name);
        const secret = await this.resources.get('Secret', req.name);
        const data = (secret.spec as { data?: { value?: string; valueBytes?: string } }).data ?? {};
        return { value: data.value ?? '', valueBytes: data.valueBytes ? Buffer.from(data.valueBytes, 'base64') : Buffer.alloc(0) };
      }),
      createCredential: this.unary(s, 'CreateCredential', async (req: { name: string; user: string; type: string; expiresAt: string; maxAuthentications: number; sessionType: string; authorization?: unknown }, id, rid) => {
        const name = req.name || undefined;
        authz(id, rid, 'Create', 'Credential', name ?? '');
        const type = req.type.toUpperCase().replace(/-/g, '_');
        if (!['AUTH_TOKEN', 'ACCESS_TOKEN', 'OAUTH2'].includes(type)) throw new PosternError('ERR_INVALID_VALUE', `credential type "${req.type}" is not one of auth-token, access-token, oauth2`);
        const spec: CredentialSpec = {
          type: type as CredentialSpec['type'],
          user: req.user,
          ...(req.expiresAt ? { expiresAt: req.expiresAt } : {}),
          ...(req.maxAuthentications ? { maxAuthentications: req.maxAuthentications } : {}),
          ...(req.sessionType ? { sessionType: req.sessionType as 'CLIENT' | 'CLIENTLESS' } : {}),
          ...(req.authorization ? { authorization: req.authorization as CredentialSpec['authorization'] } : {}),
        };
        const doc = { kind: 'Credential', metadata: { name: name ?? 'placeholder' }, spec };
        const { issues } = this.resources.prepare(doc);
        const real = issues.filter((i) => i.code !== 'ERR_READ_ONLY_KIND');
        if (real.length) throw PosternError.fromIssues(real);
        const created = await this.opts.auth.createCredential({ ...(name ? { name } : {}), spec });
        return { credential: json(created.credential), token: created.token };
      }),
      explain: this.unary(s, 'Explain', (req: { service: string; user: string; method: string; path: string; headers: Record<string, string>; body: Buffer; sessionType: string }, id, rid) => {
        authz(id, rid, 'Explain', 'Service', canonicalName('Service', req.service));
        const core = this.opts.proxy;
        if (!core) throw new PosternError('ERR_NOT_IMPLEMENTED', 'this API server runs without the proxy, so it cannot explain proxy decisions');
        const sessionType = req.sessionType ? req.sessionType.toUpperCase() : 'CLIENT';
        if (sessionType !== 'CLIENT' && sessionType !== 'CLIENTLESS') throw new PosternError('ERR_INVALID_VALUE', 'session type is CLIENT or CLIENTLESS');
        const ex = explainRequest(core, this.opts.cache, { service: req.service, user: req.user, method: req.method || 'GET', path: req.path || '/', headers: req.headers, ...(req.body.length ? { body: req.body } : {}), sessionType }, this.now());
        const decider = ex.decision.reason;
        return {
          effect: ex.decision.effect,
          reason: json(decider),
          rules: (ex.decision.trace ?? []).map((t) => ({
            policy: t.policy,
            attachedTo: t.attachedTo,
            rule: t.rule,
            effect: t.effect,
            priority: t.priority,
            result: t.matched === undefined ? 'not-reached' : t.matched === 'error' ? 'error' : t.matched ? 'matched' : 'not-matched',
            error: t.error ?? '',
          })),
          config: ex.config ?? '',
          upstreams: ex.upstreams,
          upstreamPath: ex.upstreamPath ?? '',
        };
      }),
      watch: (call: ServerWritableStream<{ kinds: string[]; fromVersion: string }, unknown>) => {
        const rid = randomUUID();
        try {
          const identity = this.identify(call.metadata);
          const kinds = (call.request.kinds.length ? call.request.kinds : Object.keys(kindInfo)).map(requireKind);
          for (const k of kinds) authz(identity, rid, 'Watch', k, '');
          const watch = this.opts.store.watch(
            {
              ...(call.request.fromVersion ? { fromVersion: call.request.fromVersion } : {}),
              kinds,
              onError: (err) => {
                call.destroy(toServiceError(err, rid) as Error);
                this.streams.delete(watch);
              },
            },
            (ev) => {
              call.write({ type: ev.type, resource: json(sanitize(ev.resource)), version: ev.version });
            },
          );
          this.streams.add(watch);
          const stop = () => {
            watch.close();
            this.streams.delete(watch);
          };
          call.on('cancelled', stop);
          call.on('close', stop);
          call.on('error', stop);
        } catch (err) {
          call.destroy(toServiceError(err, rid) as Error);
        }
      },
    };
  }

  private user() {
    const s = userServiceName;
    return {
      getStatus: this.unary(s, 'GetStatus', (_req: unknown, id) => ({
        user: json(id!.user),
        session: json(id!.session),
        groups: groupsOf(this.opts.cache, id!.user).map((g) => g.metadata.name),
        domain: this.opts.domain,
      })),
      listServices: this.unary(s, 'ListServices', (req: { namespace: string }, id) => ({ items: this.servicesFor(id!, req.namespace || undefined) })),
      disconnect: this.unary(s, 'Disconnect', async (_req: unknown, id) => {
        await this.tunnels.disconnect(id!);
        return {};
      }),
      connect: (call: ServerWritableStream<{ wireguardPublicKey: string; hostname: string; osType: string }, unknown>) => {
        const rid = randomUUID();
        void (async () => {
          try {
            const identity = this.identify(call.metadata);
            const first = await this.tunnels.connect(identity, call.request);
            call.write(first);
            this.log.info({ rid, user: identity.user.metadata.name, session: first.session, addresses: first.addresses }, 'tunnel connected');
            // Push a new state when the gateways or what the session may reach change (bursts,
            // like an apply of many Services, coalesced); end the stream when the session goes away.
            const sessionName = first.session;
            const userName = identity.user.metadata.name;
            const follows = new Set(['Gateway', 'Service', 'Policy', 'Namespace', 'ClusterConfig', 'Group']);
            let last = JSON.stringify(first);
            let services = first.services;
            let servicesStale = false;
            let pending: NodeJS.Timeout | undefined;
            const push = () => {
              pending = undefined;
              const session = this.opts.cache.get('Session', sessionName);
              const conn = (session?.status as { isConnected?: boolean; connection?: { addresses?: string[] } } | undefined);
              if (!session || !conn?.isConnected) {
                stop();
                call.end();
                return;
              }
              const user = this.opts.cache.get('User', userName) ?? identity.user;
              // Gateways heartbeat: when only they changed, the Services reachable did not.
              const who = { ...identity, user, session };
              if (servicesStale) {
                services = this.servicesFor(who, undefined);
                servicesStale = false;
              }
              const next = this.tunnels.state(who, conn.connection?.addresses ?? first.addresses, services);
              const text = JSON.stringify(next);
              if (text !== last) {
                last = text;
                call.write(next);
              }
            };
            const unsubscribe = this.opts.cache.onChange((ev) => {
              if (ev.type === 'RESYNC') servicesStale = true;
              else {
                const { kind, metadata } = ev.resource;
                const own = (kind === 'Session' && metadata.name === sessionName) || (kind === 'User' && metadata.name === userName);
                if (!own && !follows.has(kind)) return;
                if (kind !== 'Gateway') servicesStale = true;
                // The session itself ending is acted on at once.
                if (kind === 'Session' && (ev.type === 'DELETED' || !(ev.resource.status as { isConnected?: boolean } | undefined)?.isConnected)) return push();
              }
              pending ??= setTimeout(push, 100);
            });
            const handle = { close: () => stop() };
            const stop = () => {
              if (pending) clearTimeout(pending);
              unsubscribe();
              this.streams.delete(handle);
            };
            this.streams.add(handle);
            call.on('cancelled', stop);
            call.on('close', stop);
            call.on('error', stop);
          } catch (err) {
            this.log.info({ rid, code: (err as PosternError).code }, (err as Error).message);
            call.destroy(toServiceError(err, rid) as Error);
          }
        })();
      },
    };
  }

  /**
   * The Services this session may reach: those whose policies allow a plain `GET /` by it.
   * A policy that looks at headers or body may allow more requests than this shows.
   */
  private servicesFor(identity: Identity, namespace: string | undefined): ServiceInfo[] {
    const cache = this.opts.cache;
    const out: ServiceInfo[] = [];
    // The same for every Service: looked up once.
    const groups = groupsOf(cache, identity.user);
    const clusterConfig = cache.get('ClusterConfig', 'default');
    const request = { http: { method: 'GET', path: '/', host: '', scheme: 'http', uri: '/', headers: {}, queryParams: {}, size: 0 } };
    for (const svc of cache.list('Service')) {
      const { name, namespace: ns } = splitNamespaced(svc.metadata.name);
      if (namespace && ns !== namespace) continue;
      const spec = svc.spec as { mode?: string; port?: number; isPublic?: boolean; isAnonymous?: boolean };
      const nsResource = cache.get('Namespace', ns);
      const { policies } = gatherPolicies(
        { clusterConfig, namespace: nsResource, service: svc, user: identity.user, groups, session: identity.session },
        (p) => cache.get('Policy', p),
      );
      const ctx = requestContext(identity, groups, request, { service: svc, namespace: nsResource ?? null });
      const check = preCheck({ session: identity.session, user: identity.user, now: this.now(), service: svc });
      if (!spec.isAnonymous && decide(policies, ctx, check).effect !== 'ALLOW') continue;
      const domain = this.opts.domain;
      out.push({
        name,
        namespace: ns,
        mode: spec.mode ?? 'HTTP',
        port: servicePort(spec),
        isPublic: spec.isPublic ?? false,
        addresses: ((svc.status as { addresses?: { dualStackIP?: { ipv4?: string; ipv6?: string } }[] } | undefined)?.addresses ?? []).flatMap((a) => [a.dualStackIP?.ipv4, a.dualStackIP?.ipv6].filter((x): x is string => !!x)),
        privateHostname: ns === 'default' ? `${name}.local.${domain}` : `${name}.${ns}.local.${domain}`,
        publicHostname: spec.isPublic ? (ns === 'default' ? `${name}.${domain}` : `${name}.${ns}.${domain}`) : '',
      });
    }
    return out;
  }

  private authApi() {
    const s = 'postern.auth.v1.AuthService';
    const tokens = (t: { accessToken: string; refreshToken: string; expiresIn: number; session: AnyResource }) => ({
      accessToken: t.accessToken,
      refreshToken: t.refreshToken,
      expiresIn: t.expiresIn,
      sessionName: t.session.metadata.name,
    });
    return {
      authenticateWithAuthToken: this.unary(s, 'AuthenticateWithAuthToken', async (req: { authToken: string }) => tokens(await this.opts.auth.authenticateWithAuthToken(req.authToken)), false),
      refresh: this.unary(s, 'Refresh', async (req: { refreshToken: string }) => tokens(await this.opts.auth.refresh(req.refreshToken)), false),
      logout: this.unary(s, 'Logout', async (_req: unknown, _id, _rid, md) => {
        const token = bearer(md);
        if (!token) throw new PosternError('ERR_UNAUTHENTICATED', 'logout needs the access token of the session to end');
        await this.opts.auth.logout(token);
        return {};
      }, false),
    };
  }
}
