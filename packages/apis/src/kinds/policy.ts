import { z } from 'zod';
import { Attrs } from '../meta.js';

const conditionKeys = ['match', 'not', 'matchAny', 'all', 'any', 'none', 'opa'] as const;

/**
 * A policy condition: exactly one of `match` (CEL that must be true), `not` (CEL that must be
 * false), `matchAny: true`, or `all`/`any`/`none` of nested conditions.
 */
export const Condition = z
  .strictObject({
    match: z.string().min(1).optional(),
    not: z.string().min(1).optional(),
    matchAny: z.boolean().optional(),
    get all() {
      return ConditionList.optional();
    },
    get any() {
      return ConditionList.optional();
    },
    get none() {
      return ConditionList.optional();
    },
    opa: z.strictObject({ inline: z.string() }).optional(),
  })
  .check((ctx) => {
    const set = conditionKeys.filter((k) => ctx.value[k] !== undefined);
    if (set.length !== 1) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        message: set.length === 0
          ? `a condition needs one of ${conditionKeys.join(', ')}`
          : `a condition takes exactly one of ${conditionKeys.join(', ')}; found ${set.join(' and ')}`,
        params: { postern: 'ERR_ONE_OF' },
      });
    }
  });
export type Condition = {
  match?: string | undefined;
  not?: string | undefined;
  matchAny?: boolean | undefined;
  all?: { of: Condition[] } | undefined;
  any?: { of: Condition[] } | undefined;
  none?: { of: Condition[] } | undefined;
  opa?: { inline: string } | undefined;
};

const ConditionList: z.ZodType<{ of: Condition[] }> = z.strictObject({
  get of() {
    return z.array(Condition);
  },
});

export const Effect = z.enum(['ALLOW', 'DENY']);
export type Effect = z.infer<typeof Effect>;

export const Rule = z.strictObject({
  name: z.string().max(128).optional(),
  effect: Effect,
  priority: z.number().int().min(-4).max(4).default(0),
  condition: Condition,
});
export type Rule = z.infer<typeof Rule>;

export const EnforcementRule = z.strictObject({
  condition: Condition,
  effect: z.enum(['ENFORCE', 'IGNORE']),
});

export const PolicySpec = z.strictObject({
  rules: z.array(Rule).default([]),
  enforcementRules: z.array(EnforcementRule).optional(),
  isDisabled: z.boolean().optional(),
  attrs: Attrs.optional(),
});
export type PolicySpec = z.infer<typeof PolicySpec>;

/** `authorization` as attached to a Service, Namespace, User, Group, Session, Device, Credential or ClusterConfig. */
export const Authorization = z.strictObject({
  policies: z.array(z.string().min(1)).optional(),
  inlinePolicies: z.array(z.strictObject({ name: z.string().optional(), spec: PolicySpec })).optional(),
});
export type Authorization = z.infer<typeof Authorization>;
