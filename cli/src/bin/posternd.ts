#!/usr/bin/env node
import { processIo } from '../io.js';
import { main } from '../posternd.js';

const code = await main(process.argv.slice(2), processIo());
process.exitCode = code;
// After a failed start or stop, whatever is still open (a socket, a timer) must not keep the
// process alive: the failure has been reported.
if (code !== 0) setTimeout(() => process.exit(code), 1000).unref();
