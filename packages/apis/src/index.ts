/**
 * @postern/apis — the resource kinds of Postern (zod schemas with types derived from them), the
 * YAML/JSON codec that keeps line and column for errors, name rules and the typed error registry.
 * Pure: no I/O, and it imports no other Postern package.
 */
export * from './errors.js';
export * from './meta.js';
export * from './kinds/index.js';
export * from './names.js';
export * from './validate.js';
export * from './codec.js';
export * from './references.js';
export * from './addresses.js';
export * from './unsupported.js';
export * from './jsonschema.js';
