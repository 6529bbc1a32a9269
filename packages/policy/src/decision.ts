import type { Condition, PolicySpec } from '@postern/apis';
import { compileCel, isMissingField } from './cel.js';

/** A policy as it reaches a decision: where it was attached, and its spec. */
export interface PolicySource {
  /** The Policy's name, or `inline:<n>` for an inline policy. */
  name: string;
  /** What it is attached to, e.g. `Service/inventory.default` or `ClusterConfig/default`. */
  attachedTo: string;
  spec: PolicySpec;
}

export type ReasonType = 'RULE' | 'PRE_CHECK' | 'NO_POLICY_MATCH' | 'CEL_ERROR';

/** Machine-readable reason of a decision: which rule decided, or which pre-check. */
export interface Reason {
  type: ReasonType;
  policy?: string;
  attachedTo?: string;
  rule?: string;
  priority?: number;
  /** Pre-check code (SESSION_EXPIRED, …) or the CEL error text. */
  detail?: string;
}

export interface RuleTrace {
  policy: string;
  attachedTo: string;
  rule: string;
  effect: 'ALLOW' | 'DENY';
  priority: number;
  /** true/false, or 'error' with the message; undefined when not reached (a rule before it decided). */
  matched?: boolean | 'error';
  error?: string;
}

export interface Decision {
  effect: 'ALLOW' | 'DENY';
  reason: Reason;
  /** Every rule considered, in evaluation order (only filled when asked for: explain). */
  trace?: RuleTrace[];
}

export interface DecideOptions {
  /** Record every rule and evaluate all of them, for `posternctl explain`. */
  explain?: boolean;
}

class ConditionError extends Error {}

const noAttrs: Record<string, unknown> = Object.freeze({});
const noPolicyMatch: Readonly<Reason> = Object.freeze({ type: 'NO_POLICY_MATCH' });

function evalExpr(expr: string, activation: Record<string, unknown>): boolean {
  let value: unknown;
  try {
    value = compileCel(expr)(activation);
  } catch (err) {
    if (isMissingField(err)) return false;
    throw new ConditionError((err as Error).message.split('\n')[0]);
  }
  if (value instanceof Promise) throw new ConditionError('asynchronous functions are not allowed in policies');
  return value === true;
}

/** Evaluates a condition. A missing field is false; other CEL errors throw ConditionError. */
export function evaluateCondition(cond: Condition, activation: Record<string, unknown>): boolean {
  if (cond.match !== undefined) return evalExpr(cond.match, activation);
  if (cond.not !== undefined) return !evalExpr(cond.not, activation);
  if (cond.matchAny !== undefined) return cond.matchAny;
  if (cond.all) return cond.all.of.every((c) => evaluateCondition(c, activation));
  if (cond.any) return cond.any.of.some((c) => evaluateCondition(c, activation));
  if (cond.none) return !cond.none.of.some((c) => evaluateCondition(c, activation));
  if (cond.opa) throw new ConditionError('opa conditions are not implemented yet');
  return false;
}

/** Whether a policy applies to this request, per its enforcementRules and isDisabled. */
function isEnforced(p: PolicySource, ctx: unknown): boolean {
  if (p.spec.isDisabled) return false;
  const rules = p.spec.enforcementRules;
  if (!rules?.length) return true;
  const activation = { ctx, attrs: p.spec.attrs ?? {} };
  for (const r of rules) {
    try {
      if (evaluateCondition(r.condition, activation)) return r.effect === 'ENFORCE';
    } catch {
      // An enforcement rule that cannot be evaluated enforces the policy: fail closed.
      return true;
    }
  }
  // Only ENFORCE rules and none matched: the policy is meant for other requests.
  return !rules.some((r) => r.effect === 'ENFORCE');
}

interface OrderedRule {
  source: PolicySource;
  index: number;
  name: string;
  effect: 'ALLOW' | 'DENY';
  priority: number;
  condition: Condition;
  seq: number;
  /** The reason a decision by this rule gives: built once per rule, shared and frozen (access logs serialise it once). */
  reason: Readonly<Reason>;
}

/** Ordered rules of a single policy spec, computed once per spec object (specs are immutable cache entries). */
const orderedBySpec = new WeakMap<object, OrderedRule[]>();

/** Rules sorted as REFERENCE.md says: priority ascending, DENY before ALLOW at equal priority, then attachment order. */
export function orderRules(policies: readonly PolicySource[]): OrderedRule[] {
  // The common case on the request path: one policy. Its order never changes, so keep it.
  if (policies.length === 1) {
    const only = policies[0]!;
    let cached = orderedBySpec.get(only.spec);
    if (!cached || cached[0]?.source.attachedTo !== only.attachedTo || cached[0]?.source.name !== only.name) {
      cached = sortRules([only]);
      orderedBySpec.set(only.spec, cached);
    }
    return cached;
  }
  return sortRules(policies);
}

/** RULE reasons per policy source and rule index: the same frozen object for every decision by that rule. */
const reasonsBySource = new WeakMap<PolicySource, Readonly<Reason>[]>();
function ruleReason(source: PolicySource, index: number, rule: string, priority: number): Readonly<Reason> {
  let reasons = reasonsBySource.get(source);
  if (!reasons) reasonsBySource.set(source, (reasons = []));
  const kept = reasons[index];
  if (kept && kept.rule === rule && kept.priority === priority && kept.policy === source.name && kept.attachedTo === source.attachedTo) return kept;
  return (reasons[index] = Object.freeze({ type: 'RULE' as const, policy: source.name, attachedTo: source.attachedTo, rule, priority }));
}

function sortRules(policies: readonly PolicySource[]): OrderedRule[] {
  const out: OrderedRule[] = [];
  let seq = 0;
  for (const source of policies) {
    source.spec.rules.forEach((r, index) => {
      const name = r.name ?? `rule[${index}]`;
      const priority = r.priority ?? 0;
      out.push({ source, index, name, effect: r.effect, priority, condition: r.condition, seq: seq++, reason: ruleReason(source, index, name, priority) });
    });
  }
  return out.sort((a, b) => a.priority - b.priority || (a.effect === b.effect ? 0 : a.effect === 'DENY' ? -1 : 1) || a.seq - b.seq);
}

/**
 * The decision: the first rule (in priority order, DENY first at equal priority) whose condition
 * holds decides; no match denies. A pre-check failure denies before any rule is looked at.
 * A CEL error other than a missing field denies the request with reason CEL_ERROR.
 */
export function decide(policies: readonly PolicySource[], ctx: unknown, preCheck?: string, opts: DecideOptions = {}): Decision {
  if (preCheck) return { effect: 'DENY', reason: { type: 'PRE_CHECK', detail: preCheck }, ...(opts.explain ? { trace: [] } : {}) };
  // One policy (the common case): no filtered copy.
  const rules = orderRules(policies.length === 1 ? (isEnforced(policies[0]!, ctx) ? policies : []) : policies.filter((p) => isEnforced(p, ctx)));
  const trace: RuleTrace[] | undefined = opts.explain ? [] : undefined;
  let decision: Decision | undefined;
  for (const r of rules) {
    const entry: RuleTrace | undefined = trace
      ? { policy: r.source.name, attachedTo: r.source.attachedTo, rule: r.name, effect: r.effect, priority: r.priority }
      : undefined;
    if (entry) trace!.push(entry);
    if (decision && !trace) break;
    if (decision) continue; // explain: list the rules after the deciding one as not reached
    try {
      const matched = evaluateCondition(r.condition, { ctx, attrs: r.source.spec.attrs ?? noAttrs });
      if (entry) entry.matched = matched;
      if (matched) decision = { effect: r.effect, reason: r.reason };
    } catch (err) {
      const detail = (err as Error).message;
      if (entry) {
        entry.matched = 'error';
        entry.error = detail;
      }
      decision = { effect: 'DENY', reason: { type: 'CEL_ERROR', policy: r.source.name, attachedTo: r.source.attachedTo, rule: r.name, priority: r.priority, detail } };
    }
  }
  decision ??= { effect: 'DENY', reason: noPolicyMatch };
  return trace ? { ...decision, trace } : decision;
}

/** One line for logs: `ALLOW by ops-admin/ops-full-access (priority 0)`. */
export function describeDecision(d: Decision): string {
  const r = d.reason;
  switch (r.type) {
    case 'RULE':
      return `${d.effect} by ${r.policy}/${r.rule} (priority ${r.priority}, attached to ${r.attachedTo})`;
    case 'PRE_CHECK':
      return `${d.effect}: pre-check ${r.detail}`;
    case 'CEL_ERROR':
      return `${d.effect}: CEL error in ${r.policy}/${r.rule}: ${r.detail}`;
    case 'NO_POLICY_MATCH':
      return `${d.effect}: no policy rule matched`;
  }
}
