#!/usr/bin/env node
// Installed entry point: the compiled command lives in dist/ (run `npm run build` first).
import("../dist/src/bin/postern.js").catch((err) => {
  if (err?.code === "ERR_MODULE_NOT_FOUND") {
    console.error("postern is not built yet: run `npm run build` in the Postern repository.");
    process.exit(1);
  }
  throw err;
});
