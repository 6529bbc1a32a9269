import type { AnyResource, Authorization, Condition, Issue, PolicySpec } from '@postern/apis';
import { CelCompileError, compileCel } from './cel.js';
import type { PolicySource } from './decision.js';

/** The resources a request touches, each of which may carry `spec.authorization`. */
export interface Attachments {
  clusterConfig?: AnyResource | undefined;
  namespace?: AnyResource | undefined;
  service?: AnyResource | undefined;
  user?: AnyResource | undefined;
  groups?: readonly AnyResource[];
  session?: AnyResource | undefined;
  device?: AnyResource | undefined;
}

/**
 * Every policy attached to the request's resources, inline and named. A named policy that does
 * not exist is reported in `missing` (and contributes no rule: deny by default still holds).
 */
export function gatherPolicies(a: Attachments, lookup: (name: string) => AnyResource | undefined): { policies: PolicySource[]; missing: string[] } {
  const policies: PolicySource[] = [];
  const missing: string[] = [];
  const add = (r: AnyResource | undefined) => {
    if (!r) return;
    const auth = (r.spec as { authorization?: Authorization } | undefined)?.authorization;
    if (!auth) return;
    const attachedTo = `${r.kind}/${r.metadata.name}`;
    for (const name of auth.policies ?? []) {
      const p = lookup(name);
      if (!p) missing.push(name);
      else policies.push({ name, attachedTo, spec: p.spec as PolicySpec });
    }
    (auth.inlinePolicies ?? []).forEach((ip, i) => policies.push({ name: ip.name ?? `inline[${i}]`, attachedTo, spec: ip.spec }));
  };
  add(a.clusterConfig);
  add(a.namespace);
  add(a.service);
  add(a.user);
  for (const g of a.groups ?? []) add(g);
  add(a.session);
  add(a.device);
  return { policies, missing };
}

/** Names of Policies a resource refers to in `spec.authorization.policies`. */
export function referencedPolicies(r: AnyResource): string[] {
  return [...((r.spec as { authorization?: Authorization } | undefined)?.authorization?.policies ?? [])];
}

function* conditions(cond: Condition, path: (string | number)[]): Generator<{ expr: string; path: (string | number)[] }> {
  if (cond.match !== undefined) yield { expr: cond.match, path: [...path, 'match'] };
  if (cond.not !== undefined) yield { expr: cond.not, path: [...path, 'not'] };
  for (const k of ['all', 'any', 'none'] as const) {
    const list = cond[k]?.of ?? [];
    for (let i = 0; i < list.length; i++) yield* conditions(list[i]!, [...path, k, 'of', i]);
  }
}

function* specConditions(spec: PolicySpec, path: (string | number)[]) {
  for (let i = 0; i < spec.rules.length; i++) yield* conditions(spec.rules[i]!.condition, [...path, 'rules', i, 'condition']);
  for (let i = 0; i < (spec.enforcementRules ?? []).length; i++) yield* conditions(spec.enforcementRules![i]!.condition, [...path, 'enforcementRules', i, 'condition']);
}

function* resourceConditions(r: AnyResource) {
  const spec = (r.spec ?? {}) as Record<string, unknown>;
  if (r.kind === 'Policy') yield* specConditions(spec as PolicySpec, ['spec']);
  const auth = spec.authorization as Authorization | undefined;
  for (let i = 0; i < (auth?.inlinePolicies ?? []).length; i++) {
    yield* specConditions(auth!.inlinePolicies![i]!.spec, ['spec', 'authorization', 'inlinePolicies', i, 'spec']);
  }
  const dyn = spec.dynamicConfig as { rules?: { condition: Condition }[] } | undefined;
  for (let i = 0; i < (dyn?.rules ?? []).length; i++) yield* conditions(dyn!.rules![i]!.condition, ['spec', 'dynamicConfig', 'rules', i, 'condition']);
  type Plugins = { condition?: Condition; rateLimit?: { key?: { eval?: string } } }[];
  type Config = { http?: { plugins?: Plugins } } | undefined;
  const configs: [Config, (string | number)[]][] = [[spec.config as Config, ['spec', 'config']]];
  ((spec.dynamicConfig as { configs?: Config[] } | undefined)?.configs ?? []).forEach((c, i) => configs.push([c, ['spec', 'dynamicConfig', 'configs', i]]));
  for (const [config, base] of configs) {
    const plugins = config?.http?.plugins ?? [];
    for (let i = 0; i < plugins.length; i++) {
      const c = plugins[i]!.condition;
      if (c) yield* conditions(c, [...base, 'http', 'plugins', i, 'condition']);
      const key = plugins[i]!.rateLimit?.key?.eval;
      if (key) yield { expr: key, path: [...base, 'http', 'plugins', i, 'rateLimit', 'key', 'eval'] };
    }
  }
  const idp = spec.postAuthenticationRules as { condition: Condition }[] | undefined;
  for (let i = 0; i < (idp ?? []).length; i++) yield* conditions(idp![i]!.condition, ['spec', 'postAuthenticationRules', i, 'condition']);
}

/**
 * Compiles every CEL expression in a resource; each one that does not compile becomes an
 * ERR_INVALID_CEL issue with its field path and the column inside the expression.
 */
export function celIssues(r: AnyResource): (Issue & { segments: (string | number)[] })[] {
  const issues: (Issue & { segments: (string | number)[] })[] = [];
  for (const { expr, path } of resourceConditions(r)) {
    try {
      compileCel(expr);
    } catch (err) {
      if (!(err instanceof CelCompileError)) throw err;
      const pathText = path.reduce<string>((acc, seg) => (typeof seg === 'number' ? `${acc}[${seg}]` : acc ? `${acc}.${seg}` : seg), '');
      issues.push({
        code: 'ERR_INVALID_CEL',
        message: `CEL does not compile${err.column !== undefined ? ` at column ${err.column}` : ''}: ${err.detail} in ${JSON.stringify(expr)}`,
        path: pathText,
        segments: path,
      });
    }
  }
  return issues;
}
