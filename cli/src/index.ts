/**
 * @postern/cli — the `postern`, `posternctl` and `posternd` commands. Thin: behaviour lives in
 * the packages; each `main(argv, io)` runs in-process for tests. Nothing imports this package.
 */
export { main as postern } from './postern.js';
export { main as posternctl } from './posternctl.js';
export { main as posternd } from './posternd.js';
export { processIo, type Io } from './io.js';
export { fetchClusterCa, caFingerprint } from './tofu.js';
