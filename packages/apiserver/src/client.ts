import { credentials, Metadata, type ChannelCredentials, type ClientReadableStream } from '@grpc/grpc-js';
import type { AnyResource } from '@postern/apis';
import { AuthServiceClient, type SessionTokens } from './gen/postern/auth/v1/auth.js';
import { CoreServiceClient, type ApplyResult, type CreateCredentialRequest, type ExplainResponse, type WatchEvent } from './gen/postern/core/v1/core.js';
import { UserServiceClient, type ConnectState, type GetStatusResponse, type ServiceInfo } from './gen/postern/user/v1/user.js';
import { fromServiceError } from './grpc-errors.js';

export interface ApiClientOptions {
  /** `host:port` of the API server. */
  address: string;
  /** PEM of the cluster CA to trust; undefined means plaintext (loopback tests only). */
  ca?: string;
  /** Name the server certificate must carry, when it differs from the address's host. */
  serverName?: string;
  /** Returns the access token to send (called per call, so a refreshed token is picked up). */
  token?: () => string | undefined;
  /** Per-call deadline in ms; default 30 s. */
  timeoutMs?: number;
}

type Callback<T> = (err: unknown, res: T) => void;

/** A promise-based client for the Core, User and Auth APIs, turning gRPC errors into PosternErrors. */
export class ApiClient {
  private readonly core: CoreServiceClient;
  private readonly user: UserServiceClient;
  private readonly auth: AuthServiceClient;

  constructor(private readonly opts: ApiClientOptions) {
    const creds: ChannelCredentials = opts.ca ? credentials.createSsl(Buffer.from(opts.ca)) : credentials.createInsecure();
    const channelOptions = {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      ...(opts.serverName ? { 'grpc.ssl_target_name_override': opts.serverName, 'grpc.default_authority': opts.serverName } : {}),
    };
    this.core = new CoreServiceClient(opts.address, creds, channelOptions);
    this.user = new UserServiceClient(opts.address, creds, channelOptions);
    this.auth = new AuthServiceClient(opts.address, creds, channelOptions);
  }

  private md(): Metadata {
    const md = new Metadata();
    const t = this.opts.token?.();
    if (t) md.set('authorization', `Bearer ${t}`);
    return md;
  }

  private call<Req, Res>(client: object, method: string, req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + (this.opts.timeoutMs ?? 30_000));
      const fn = (client as Record<string, (r: Req, m: Metadata, o: object, cb: Callback<Res>) => void>)[method]!;
      fn.call(client, req, this.md(), { deadline }, (err, res) => (err ? reject(fromServiceError(err)) : resolve(res)));
    });
  }

  create(resource: AnyResource, dryRun = false): Promise<AnyResource> {
    return this.call<object, { resource: AnyResource }>(this.core, 'create', { resource, dryRun }).then((r) => r.resource);
  }
  get(kind: string, name: string): Promise<AnyResource> {
    return this.call<object, { resource: AnyResource }>(this.core, 'get', { kind, name }).then((r) => r.resource);
  }
  list(kind: string, opts: { labelSelector?: string; namespace?: string } = {}): Promise<{ items: AnyResource[]; resourceVersion: string }> {
    return this.call(this.core, 'list', { kind, labelSelector: opts.labelSelector ?? '', namespace: opts.namespace ?? '' });
  }
  update(resource: AnyResource, dryRun = false): Promise<AnyResource> {
    return this.call<object, { resource: AnyResource }>(this.core, 'update', { resource, dryRun }).then((r) => r.resource);
  }
  delete(kind: string, name: string, resourceVersion = ''): Promise<AnyResource> {
    return this.call<object, { resource: AnyResource }>(this.core, 'delete', { kind, name, resourceVersion }).then((r) => r.resource);
  }
  apply(resources: readonly unknown[], opts: { dryRun?: boolean; prune?: boolean } = {}): Promise<ApplyResult[]> {
    return this.call<object, { results: ApplyResult[] }>(this.core, 'apply', { resources, dryRun: opts.dryRun ?? false, prune: opts.prune ?? false }).then((r) => r.results);
  }
  getSecretValue(name: string): Promise<{ value: string; valueBytes: Buffer }> {
    return this.call(this.core, 'getSecretValue', { kind: 'Secret', name });
  }
  createCredential(req: Partial<CreateCredentialRequest> & { user: string; type: string }): Promise<{ credential: AnyResource; token: string }> {
    return this.call(this.core, 'createCredential', { name: '', expiresAt: '', maxAuthentications: 0, sessionType: '', authorization: undefined, ...req });
  }
  explain(req: { service: string; user: string; method?: string; path?: string; headers?: Record<string, string>; body?: Buffer; sessionType?: string }): Promise<ExplainResponse> {
    return this.call(this.core, 'explain', { method: '', path: '', headers: {}, body: Buffer.alloc(0), sessionType: '', ...req });
  }
  /** Streams changes; `onEvent` gets each, `onEnd` the error that ended the stream (undefined when cancelled). */
  watch(kinds: string[], fromVersion: string, onEvent: (ev: WatchEvent) => void, onEnd: (err?: Error) => void): { cancel(): void } {
    const stream: ClientReadableStream<WatchEvent> = this.core.watch({ kinds, fromVersion }, this.md());
    stream.on('data', onEvent);
    stream.on('error', (err: { code?: number }) => onEnd(err.code === 1 ? undefined : fromServiceError(err)));
    stream.on('end', () => onEnd());
    return { cancel: () => stream.cancel() };
  }

  /** Opens the tunnel control stream: `onState` gets the first state and every later change. */
  connect(req: { wireguardPublicKey: string; hostname?: string; osType?: string }, onState: (s: ConnectState) => void, onEnd: (err?: Error) => void): { cancel(): void } {
    const stream: ClientReadableStream<ConnectState> = this.user.connect({ hostname: '', osType: '', ...req }, this.md());
    stream.on('data', onState);
    // Only a clean end means "the session was disconnected"; any error (a restart, a dropped
    // connection, even a cancel) is reported as one.
    // grpc-js may emit 'end' after 'error': report the first only.
    let ended = false;
    const once = (err?: Error) => {
      if (ended) return;
      ended = true;
      onEnd(err);
    };
    stream.on('error', (err: { code?: number }) => once(fromServiceError(err)));
    stream.on('end', () => once());
    return { cancel: () => stream.cancel() };
  }
  disconnect(): Promise<void> {
    return this.call<object, object>(this.user, 'disconnect', {}).then(() => undefined);
  }
  status(): Promise<GetStatusResponse> {
    return this.call(this.user, 'getStatus', {});
  }
  listServices(namespace = ''): Promise<ServiceInfo[]> {
    return this.call<object, { items: ServiceInfo[] }>(this.user, 'listServices', { namespace }).then((r) => r.items);
  }

  authenticateWithAuthToken(authToken: string): Promise<SessionTokens> {
    return this.call(this.auth, 'authenticateWithAuthToken', { authToken });
  }
  refresh(refreshToken: string): Promise<SessionTokens> {
    return this.call(this.auth, 'refresh', { refreshToken });
  }
  logout(): Promise<void> {
    return this.call<object, object>(this.auth, 'logout', {}).then(() => undefined);
  }

  close(): void {
    this.core.close();
    this.user.close();
    this.auth.close();
  }
}

export type { ApplyResult, ConnectState, ExplainResponse, ServiceInfo, SessionTokens, WatchEvent, GetStatusResponse };
