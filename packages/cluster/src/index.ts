/**
 * @postern/cluster — `posternd`'s composition: opens the store (PGlite or PostgreSQL),
 * initializes the cluster once (root user, its policy, signing keys, CA), and runs every server
 * component in one process. Imported by the CLI binaries only.
 */
export { startCluster, type ClusterOptions, type RunningCluster } from './cluster.js';
export { initCluster, bootstrapResources, clusterInfo, ensureClusterInfo, type ClusterInfo } from './init.js';
export { GatewayHost, type GatewayOptions } from './gateway.js';
export { clusterTls, fingerprint, type ClusterTls } from './tls.js';
export { posterndLogger } from './log.js';
