/** Test harness: real components started and stopped by tests (PostgreSQL, posternd, CLIs). */
export { TestPostgres, freePort } from './postgres.js';
export { startTestCluster, type TestCluster, type CliResult } from './cluster.js';
export { spawnPosternd, startLoggedIn, runBin, bin, childPids, type RunningPosternd, type LoggedInPosternd } from './process.js';
export { RecordingUpstream, type Seen } from './upstream.js';
export { send, type Reply } from './http.js';
export { Topology, originalResolvConf, sh, type Host } from './netns.js';
