/**
 * @postern/gateway-agent — tunnel endpoints on a gateway host: the WireGuard interface (kernel
 * module or wireguard-go) driven through wireguard-tools, its peers kept equal to the connected
 * sessions from the store's watch, and the Gateway resource that tells clients how to reach it.
 * Also the WireGuard driver the `postern` client uses, on its own as
 * `@postern/gateway-agent/wireguard` (no store: the client does not load the database drivers).
 * Imports apis and store only.
 */
export { GatewayAgent, agentCacheKinds, defaultListenPort, defaultMtu, type GatewayAgentOptions } from './agent.js';
export { desiredPeers, type SessionConnection } from './peers.js';
export { WireGuardInterface, generateKeyPair, publicKeyOf, runTool, type Implementation, type Peer, type PeerStatus } from './wireguard.js';
