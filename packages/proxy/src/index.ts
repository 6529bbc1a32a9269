/**
 * @postern/proxy — the identity-aware proxy: per-Service listeners (callers identified by tunnel
 * source address) and a public HTTPS listener (callers identified by access token); every
 * request normalised, authorized by @postern/policy, routed, given its upstream credentials from
 * Secrets and streamed through undici pools. Imports apis, store, policy and authserver.
 */
export { Proxy } from './server.js';
export { ProxyCore, proxyCacheKinds, type Entry, type ProxyCoreOptions } from './handler.js';
export { normalizeTarget, type TargetResult } from './normalize.js';
export { compileService, rewritePath, type CompiledService, type Route } from './routes.js';
export { IdentityIndex, tokenFromRequest, type Caller } from './identity.js';
export { framingProblem } from './headers.js';
export { UpstreamPools, Balancer } from './upstream.js';
export { LocalRateCounter, type RateCounter, type RateWindow } from './plugins.js';
export { explainRequest, type ExplainInput, type Explanation } from './explain.js';
/** Envoy's ext_proc protocol as Postern speaks it (for writing processors and testing them). */
export * as extProcProtocol from './gen/envoy/service/ext_proc/v3/external_processor.js';
