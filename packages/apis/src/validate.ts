import { z } from 'zod';
import type { ErrorCode, Issue } from './errors.js';
import { AnyResource, isKind, kindInfo, kinds, resourceSchema, type Kind } from './kinds/index.js';
import { canonicalName, closest, nameIssues } from './names.js';

export type PathSegment = string | number;

/** `['spec', 'rules', 0, 'effect']` → `spec.rules[0].effect`. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${seg}` : seg;
  }
  return out;
}

export interface ValidationIssue extends Issue {
  /** The path as segments, for locating it in the source text. */
  segments: PathSegment[];
  /** Whether the issue is about a key (point at the key) rather than a value. */
  atKey?: boolean;
}

export interface ValidationResult {
  /** The resource with schema defaults filled in and its name made canonical; set only when there are no issues. */
  resource?: AnyResource;
  issues: ValidationIssue[];
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = root;
  for (const seg of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[seg];
  }
  return cur;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return typeof v === 'string' ? `the string "${v.length > 40 ? `${v.slice(0, 40)}…` : v}"` : `${typeof v} ${String(v)}`;
}

/** Walks a schema down a path to the object found there, to name the fields it accepts. */
function knownKeysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let cur: z.core.$ZodType | undefined = schema;
  const unwrap = () => {
    for (;;) {
      const def: z.core.$ZodTypeDef & Record<string, unknown> = cur!._zod.def as never;
      if (def.type === 'optional' || def.type === 'default' || def.type === 'nullable' || def.type === 'prefault') cur = def.innerType as z.core.$ZodType;
      else if (def.type === 'pipe') cur = def.in as z.core.$ZodType;
      else if (def.type === 'lazy') cur = (def.getter as () => z.core.$ZodType)();
      else return;
    }
  };
  for (const seg of path) {
    unwrap();
    const def = cur._zod.def as z.core.$ZodTypeDef & Record<string, unknown>;
    if (def.type === 'object') cur = (def.shape as Record<string, z.core.$ZodType>)[seg as string];
    else if (def.type === 'array') cur = def.element as z.core.$ZodType;
    else if (def.type === 'record') cur = def.valueType as z.core.$ZodType;
    else return [];
    if (!cur) return [];
  }
  unwrap();
  const def = cur._zod.def as z.core.$ZodTypeDef & Record<string, unknown>;
  return def.type === 'object' ? Object.keys(def.shape as object) : [];
}

function mapZodIssue(schema: z.ZodType, doc: unknown, zi: z.core.$ZodIssue): ValidationIssue[] {
  const segments = zi.path.filter((p): p is string | number => typeof p !== 'symbol');
  const at = (code: ErrorCode, message: string, more: Partial<ValidationIssue> = {}): ValidationIssue => ({
    code,
    message,
    path: formatPath(more.segments ?? segments),
    segments,
    ...more,
  });
  const value = valueAt(doc, segments);
  switch (zi.code) {
    case 'invalid_type':
      if (value === undefined) return [at('ERR_REQUIRED', `required field is missing (expected ${zi.expected})`)];
      return [at('ERR_INVALID_TYPE', `expected ${zi.expected}, got ${typeName(value)}`)];
    case 'unrecognized_keys': {
      const known = knownKeysAt(schema, segments);
      return zi.keys.map((key) => {
        const hint = closest(key, known);
        const keyPath = [...segments, key];
        return at('ERR_UNKNOWN_FIELD', `unknown field "${key}"${hint ? `; did you mean "${hint}"?` : known.length ? ` (allowed: ${known.join(', ')})` : ''}`, {
          segments: keyPath,
          path: formatPath(keyPath),
          atKey: true,
        });
      });
    }
    case 'invalid_value':
      if (value === undefined) return [at('ERR_REQUIRED', `required field is missing (one of ${zi.values.map((v) => JSON.stringify(v)).join(', ')})`)];
      return [at('ERR_INVALID_VALUE', `expected one of ${zi.values.map((v) => JSON.stringify(v)).join(', ')}, got ${typeName(value)}`)];
    case 'too_small':
    case 'too_big':
    case 'invalid_format':
    case 'not_multiple_of':
    case 'invalid_union':
    case 'invalid_key':
    case 'invalid_element':
      return [at('ERR_INVALID_VALUE', zi.message)];
    case 'custom': {
      const code = (zi.params as { postern?: ErrorCode } | undefined)?.postern ?? 'ERR_INVALID_VALUE';
      return [at(code, zi.message)];
    }
  }
  return [at('ERR_INVALID_VALUE', (zi as { message: string }).message)];
}

/**
 * Validates one resource document against the schema of its kind and the name rules.
 * Reports every problem, not only the first.
 */
export function validateResource(doc: unknown): ValidationResult {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    return { issues: [{ code: 'ERR_NOT_AN_OBJECT', message: `a resource is a mapping with kind, metadata and spec; got ${typeName(doc)}`, path: '', segments: [] }] };
  }
  const kind = (doc as { kind?: unknown }).kind;
  if (kind === undefined) {
    return { issues: [{ code: 'ERR_REQUIRED', message: `kind is missing (one of ${kinds.join(', ')})`, path: 'kind', segments: ['kind'] }] };
  }
  if (!isKind(kind)) {
    const hint = typeof kind === 'string' ? closest(kind, kinds) : undefined;
    return {
      issues: [{
        code: 'ERR_UNKNOWN_KIND',
        message: `unknown kind ${typeof kind === 'string' ? `"${kind}"` : typeName(kind)}${hint ? `; did you mean "${hint}"?` : ` (one of ${kinds.join(', ')})`}`,
        path: 'kind',
        segments: ['kind'],
      }],
    };
  }
  const schema = resourceSchema(kind);
  const parsed = schema.safeParse(doc);
  const issues: ValidationIssue[] = parsed.success ? [] : parsed.error.issues.flatMap((zi) => mapZodIssue(schema, doc, zi));
  const name = (doc as { metadata?: { name?: unknown } }).metadata?.name;
  if (typeof name === 'string') issues.push(...nameIssues(kind, name).map((i) => ({ ...i, segments: ['metadata', 'name'] })));
  if (issues.length > 0 || !parsed.success) return { issues };
  const resource = parsed.data as AnyResource;
  resource.metadata.name = canonicalName(kind, resource.metadata.name);
  return { resource, issues };
}

/** Whether Postern writes this kind itself, so `apply` and `create` refuse it. */
export function isSystemKind(kind: Kind): boolean {
  return kindInfo[kind].system;
}
