/** Test harness: real components started and stopped by tests (PostgreSQL, posternd, CLIs). */
export { TestPostgres, freePort } from './postgres.js';
