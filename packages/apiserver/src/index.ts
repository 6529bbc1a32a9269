/**
 * @postern/apiserver — the gRPC API: Core API (CRUD, apply, watch for every kind), User API
 * (status, ListServices) and Auth API (login with auth token, refresh, logout), every call
 * authenticated by a session access token and authorized by @postern/policy. Also the client
 * the CLIs use, on its own as `@postern/apiserver/client` (the server's imports — store, policy,
 * proxy — are not loaded by a CLI command). Imports apis, store, policy, authserver and proxy (for
 * Explain); never the CLIs or posternd.
 */
export { ApiServer, apiCacheKinds, coreServiceName, userServiceName, type ApiServerOptions } from './server.js';
export { ApiClient, type ApiClientOptions, type ApplyResult, type ConnectState, type ExplainResponse, type ServiceInfo, type SessionTokens, type WatchEvent, type GetStatusResponse } from './client.js';
export { ResourceService, sanitize, systemAnnotation, type ApplyAction } from './resources.js';
export { ApiAuthorizer, type GrpcRequestInfo } from './authz.js';
export { fromServiceError, toServiceError, grpcStatusFor } from './grpc-errors.js';
export { Tunnels, tunnelMtu, keepaliveSeconds } from './tunnels.js';
