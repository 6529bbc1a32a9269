import { isIP } from 'node:net';
import { Environment } from '@marcbachmann/cel-js';

/** Why an expression does not compile, with the 1-based column where the parser stopped. */
export class CelCompileError extends Error {
  constructor(readonly expression: string, readonly detail: string, readonly column?: number) {
    super(column !== undefined ? `column ${column}: ${detail}` : detail);
    this.name = 'CelCompileError';
  }
}

export type CompiledExpression = (activation: Record<string, unknown>) => unknown;

function ipv4ToInt(ip: string): number | undefined {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return undefined;
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

function ipv6ToBigInt(ip: string): bigint | undefined {
  if (isIP(ip) !== 6) return undefined;
  let [head, tail] = ip.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const missing = 8 - h.length - t.length;
  const groups = tail !== undefined ? [...h, ...Array(missing).fill('0'), ...t] : h;
  if (groups.length !== 8) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g || '0', 16)), 0n);
}

/** Whether `ip` lies in `cidr` (IPv4 or IPv6). False for anything malformed. */
export function ipInRange(ip: string, cidr: string): boolean {
  const [net, bitsText] = cidr.split('/');
  if (!net) return false;
  const v = isIP(ip);
  if (v !== isIP(net)) return false;
  const max = v === 4 ? 32 : 128;
  const bits = bitsText === undefined ? max : Number(bitsText);
  if (!Number.isInteger(bits) || bits < 0 || bits > max) return false;
  if (v === 4) {
    const a = ipv4ToInt(ip);
    const b = ipv4ToInt(net);
    if (a === undefined || b === undefined) return false;
    const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
    return (a & mask) >>> 0 === (b & mask) >>> 0;
  }
  const a = ipv6ToBigInt(ip);
  const b = ipv6ToBigInt(net);
  if (a === undefined || b === undefined) return false;
  const shift = BigInt(128 - bits);
  return a >> shift === b >> shift;
}

const toJs = (v: unknown): unknown => (typeof v === 'bigint' ? Number(v) : v);
const listHas = (list: unknown[], wanted: unknown[]) => wanted.map((w) => list.some((x) => toJs(x) === toJs(w)));

/** The CEL environment of Postern: every variable dynamic, plus REFERENCE.md's extra functions. */
function buildEnvironment(): Environment {
  const env = new Environment({ unlistedVariablesAreDyn: true, homogeneousAggregateLiterals: false });
  // hasAll/hasAny take either one list or up to eight loose values: groups.hasAll("dev", "ops").
  for (let n = 1; n <= 8; n++) {
    const params = Array.from({ length: n }, () => 'dyn').join(', ');
    env.registerFunction(`list.hasAll(${params}): bool`, (list: unknown[], ...wanted: unknown[]) =>
      listHas(list, n === 1 && Array.isArray(wanted[0]) ? (wanted[0] as unknown[]) : wanted).every(Boolean),
    );
    env.registerFunction(`list.hasAny(${params}): bool`, (list: unknown[], ...wanted: unknown[]) =>
      listHas(list, n === 1 && Array.isArray(wanted[0]) ? (wanted[0] as unknown[]) : wanted).some(Boolean),
    );
  }
  env.registerFunction('string.toLower(): string', (s: string) => s.toLowerCase());
  env.registerFunction('string.toUpper(): string', (s: string) => s.toUpperCase());
  env.registerFunction('now(): google.protobuf.Timestamp', () => new Date());
  // `json.parse(...)` and `net.isIPInRange(...)` read as methods on constants of namespace types.
  class JsonFunctions {}
  class NetFunctions {}
  env.registerType('postern.Json', JsonFunctions);
  env.registerType('postern.Net', NetFunctions);
  env.registerConstant('json', 'postern.Json', new JsonFunctions());
  env.registerConstant('net', 'postern.Net', new NetFunctions());
  env.registerFunction('postern.Json.parse(string): dyn', (_ns: JsonFunctions, s: string) => JSON.parse(s) as unknown);
  env.registerFunction('postern.Net.isIPInRange(string, string): bool', (_ns: NetFunctions, ip: string, cidr: string) => ipInRange(ip, cidr));
  // cel-spec compares int and double by value; the library orders them but has no equality
  // across the two (JSON bodies make `bodyMap.age == 18` common). `==` brings `!=` and both directions.
  env.registerOperator('double == int', (a: number, b: bigint) => a === Number(b));
  return env;
}

const env = buildEnvironment();
const cache = new Map<string, CompiledExpression>();
const maxCached = 50_000;

/**
 * Compiles a CEL expression once; later calls with the same text reuse it (the cache is keyed by
 * the expression's content, so identical rules in different policies share one program).
 * Throws CelCompileError with the column of the problem.
 */
export function compileCel(expression: string): CompiledExpression {
  const hit = cache.get(expression);
  if (hit) return hit;
  let program: CompiledExpression;
  try {
    const parsed = env.parse(expression);
    program = (activation) => parsed(activation);
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    throw new CelCompileError(expression, msg.split('\n')[0] ?? msg, caretColumn(msg));
  }
  if (cache.size >= maxCached) cache.clear();
  cache.set(expression, program);
  return program;
}

/** cel-js draws a caret under the failing column; read it back. */
function caretColumn(msg: string): number | undefined {
  const lines = msg.split('\n');
  const caret = lines.find((l) => /^\s*\^/.test(l) && l.trim().startsWith('^'));
  if (!caret) return undefined;
  const prefix = lines.find((l) => l.startsWith('>'));
  const offset = prefix ? (prefix.match(/^>\s*\d*\s*\|\s*/)?.[0].length ?? 0) : 0;
  return caret.indexOf('^') - offset + 1;
}

/** A missing map key or field: CEL's `no such key`, which Postern counts as false. */
export function isMissingField(err: unknown): boolean {
  return /No such key|no such field|undefined field|Unknown variable/i.test((err as Error)?.message ?? '');
}
