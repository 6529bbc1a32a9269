import { encodeYaml, formatIssue, isPosternError, servicePort, type AnyResource } from '@postern/apis';
import type { Io } from './io.js';

export type OutputFormat = 'table' | 'yaml' | 'json';

export function parseOutput(v: string | undefined): OutputFormat {
  if (v === undefined || v === 'table' || v === 'wide') return 'table';
  if (v === 'yaml' || v === 'json') return v;
  throw new Error(`-o takes table, yaml or json, not "${v}"`);
}

/** `5s`, `3m`, `2h`, `4d` since an ISO time. */
export function age(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const s = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86_400)}d`;
}

/** `in 3h`, or `expired`. */
export function until(iso: string | undefined, now = Date.now()): string {
  if (!iso) return 'never';
  const ms = Date.parse(iso) - now;
  if (ms <= 0) return 'expired';
  return `in ${age(new Date(now - ms).toISOString(), now)}`;
}

/** Columns padded like kubectl, header in capitals. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

const get = (r: AnyResource, path: string): unknown => path.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), r);
const text = (v: unknown): string => (v === undefined || v === null || v === '' ? '-' : Array.isArray(v) ? v.join(',') || '-' : String(v));

const columns: Record<string, [string, (r: AnyResource) => string][]> = {
  Service: [
    ['MODE', (r) => text(get(r, 'spec.mode'))],
    ['PORT', (r) => String(servicePort(r.spec as { port?: number; isTLS?: boolean }))],
    ['PUBLIC', (r) => (get(r, 'spec.isPublic') ? 'yes' : 'no')],
  ],
  User: [
    ['TYPE', (r) => text(get(r, 'spec.type'))],
    ['EMAIL', (r) => text(get(r, 'spec.email'))],
    ['GROUPS', (r) => text(get(r, 'spec.groups'))],
  ],
  Policy: [['RULES', (r) => String(((get(r, 'spec.rules') as unknown[]) ?? []).length)]],
  Session: [
    ['USER', (r) => text(get(r, 'status.userRef.name'))],
    ['TYPE', (r) => text(get(r, 'status.type'))],
    ['STATE', (r) => text(get(r, 'spec.state'))],
    ['EXPIRES', (r) => until(get(r, 'spec.expiresAt') as string | undefined)],
  ],
  Credential: [
    ['USER', (r) => text(get(r, 'spec.user'))],
    ['TYPE', (r) => text(get(r, 'spec.type'))],
    ['USED', (r) => text(get(r, 'status.totalAuthentications') ?? 0)],
    ['EXPIRES', (r) => until(get(r, 'spec.expiresAt') as string | undefined)],
  ],
};

/** Prints resources in the chosen format: table (a row each), yaml (`---` between), json (one object or `{items}`). */
export function printResources(io: Io, kind: string, items: AnyResource[], format: OutputFormat, single: boolean): void {
  if (format === 'json') {
    io.out(JSON.stringify(single ? items[0] : { kind: 'List', items }, null, 2) + '\n');
    return;
  }
  if (format === 'yaml') {
    io.out(encodeYaml(items));
    return;
  }
  if (items.length === 0) {
    io.err(`No ${kind} resources found.\n`);
    return;
  }
  const extra = columns[kind] ?? [];
  io.out(table(['NAME', ...extra.map(([h]) => h), 'AGE'], items.map((r) => [r.metadata.name, ...extra.map(([, f]) => f(r)), age(r.metadata.createdAt)])));
}

/** Prints an error the way every command does, and returns the exit code (1). */
export function reportError(io: Io, err: unknown): number {
  if (isPosternError(err)) {
    if (err.issues.length > 1 || (err.issues.length === 1 && (err.issues[0]!.line !== undefined || err.issues[0]!.file))) {
      io.err(`error: ${err.issues.length} problem${err.issues.length > 1 ? 's' : ''} found, nothing was changed:\n`);
      for (const i of err.issues) io.err(`  ${formatIssue(i)}\n`);
    } else {
      io.err(`error: ${err.message} [${err.code}]\n`);
    }
    return 1;
  }
  const e = err as { code?: string; message?: string };
  if (e.code?.startsWith('commander.')) return 1;
  io.err(`error: ${e.message ?? String(err)}\n`);
  return 1;
}
