import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AnyResource, PolicySpec } from '@postern/apis';
import { CelCompileError, celIssues, compileCel, decide, gatherPolicies, ipInRange, preCheck, type PolicySource } from '../src/index.js';

const user = (groups: string[], extra: Record<string, unknown> = {}) => ({ metadata: { name: 'alice', uid: 'u1' }, spec: { type: 'HUMAN', email: 'alice@example.test', groups, ...extra } });
const http = (method: string, path: string, headers: Record<string, string> = {}, bodyMap?: unknown) => ({ http: { method, path, headers, ...(bodyMap !== undefined ? { bodyMap } : {}) } });
const ctx = (groups: string[], request = http('GET', '/')) => ({ user: user(groups), request });
const pol = (name: string, rules: PolicySpec['rules'], extra: Partial<PolicySpec> = {}): PolicySource => ({ name, attachedTo: 'Service/s.default', spec: { rules, ...extra } });
const allow = (match: string, priority = 0, name?: string) => ({ effect: 'ALLOW' as const, priority, condition: { match }, ...(name ? { name } : {}) });
const deny = (match: string, priority = 0, name?: string) => ({ effect: 'DENY' as const, priority, condition: { match }, ...(name ? { name } : {}) });

interface Case {
  name: string;
  policies: PolicySource[];
  ctx: unknown;
  effect: 'ALLOW' | 'DENY';
  reason: string;
  rule?: string;
  preCheck?: string;
}

const cases: Case[] = [
  { name: 'no policy denies', policies: [], ctx: ctx(['dev']), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'policy with no rules denies', policies: [pol('p', [])], ctx: ctx(['dev']), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'matching ALLOW allows', policies: [pol('p', [allow('"dev" in ctx.user.spec.groups', 0, 'dev')])], ctx: ctx(['dev']), effect: 'ALLOW', reason: 'RULE', rule: 'dev' },
  { name: 'non-matching ALLOW denies', policies: [pol('p', [allow('"dev" in ctx.user.spec.groups')])], ctx: ctx(['ops']), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'DENY before ALLOW at equal priority', policies: [pol('p', [allow('true', 0, 'a'), deny('true', 0, 'd')])], ctx: ctx([]), effect: 'DENY', reason: 'RULE', rule: 'd' },
  { name: 'DENY before ALLOW across policies', policies: [pol('a', [allow('true', 0, 'a')]), pol('b', [deny('true', 0, 'd')])], ctx: ctx([]), effect: 'DENY', reason: 'RULE', rule: 'd' },
  { name: 'lower priority number wins over DENY', policies: [pol('p', [deny('true', 0, 'd'), allow('true', -1, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'priority -4 is first', policies: [pol('p', [allow('true', -3, 'a'), deny('true', -4, 'd')])], ctx: ctx([]), effect: 'DENY', reason: 'RULE', rule: 'd' },
  { name: 'priority 4 is last', policies: [pol('p', [deny('true', 4, 'd'), allow('true', 3, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'a DENY that does not match lets ALLOW decide', policies: [pol('p', [deny('ctx.request.http.method == "DELETE"', 0, 'd'), allow('true', 0, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'first ALLOW in attachment order decides at equal priority', policies: [pol('x', [allow('true', 0, 'first')]), pol('y', [allow('true', 0, 'second')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'first' },
  { name: 'missing field is false, not a crash', policies: [pol('p', [allow('ctx.user.spec.attrs.level == 3')])], ctx: ctx([]), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'missing header is false', policies: [pol('p', [allow('ctx.request.http.headers["x-team"] == "payments"')])], ctx: ctx([]), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'a DENY on a missing field does not block', policies: [pol('p', [deny('ctx.request.http.bodyMap.amount > 10', 0, 'd'), allow('true', 0, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'runtime CEL error denies with CEL_ERROR', policies: [pol('p', [allow('1 / 0 == 1', 0, 'div')])], ctx: ctx([]), effect: 'DENY', reason: 'CEL_ERROR', rule: 'div' },
  { name: 'runtime error in a DENY still denies', policies: [pol('p', [deny('int("x") == 1', 0, 'bad'), allow('true', 1)])], ctx: ctx([]), effect: 'DENY', reason: 'CEL_ERROR', rule: 'bad' },
  { name: 'not: true when the expression is false', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { not: '"ops" in ctx.user.spec.groups' } }])], ctx: ctx(['dev']), effect: 'ALLOW', reason: 'RULE' },
  { name: 'not: false when the expression is true', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { not: '"ops" in ctx.user.spec.groups' } }])], ctx: ctx(['ops']), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'matchAny: true', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { matchAny: true } }])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE' },
  { name: 'matchAny: false', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { matchAny: false } }])], ctx: ctx([]), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'all.of: every one holds', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { all: { of: [{ match: '"dev" in ctx.user.spec.groups' }, { match: 'ctx.request.http.method == "GET"' }] } } }])], ctx: ctx(['dev']), effect: 'ALLOW', reason: 'RULE' },
  { name: 'all.of: one fails', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { all: { of: [{ match: '"dev" in ctx.user.spec.groups' }, { match: 'ctx.request.http.method == "POST"' }] } } }])], ctx: ctx(['dev']), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'any.of: one holds', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { any: { of: [{ match: 'false' }, { match: 'true' }] } } }])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE' },
  { name: 'any.of: none holds', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { any: { of: [{ match: 'false' }, { match: 'false' }] } } }])], ctx: ctx([]), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'none.of: none holds', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { none: { of: [{ match: 'false' }] } } }])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE' },
  { name: 'none.of: one holds', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { none: { of: [{ match: 'true' }, { match: 'false' }] } } }])], ctx: ctx([]), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'nested all inside any', policies: [pol('p', [{ effect: 'ALLOW', priority: 0, condition: { any: { of: [{ match: 'false' }, { all: { of: [{ match: 'true' }, { not: 'false' }] } }] } } }])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE' },
  { name: 'isDisabled policy is skipped', policies: [pol('p', [allow('true')], { isDisabled: true })], ctx: ctx([]), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'disabled DENY policy does not block', policies: [pol('d', [deny('true')], { isDisabled: true }), pol('a', [allow('true', 0, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'enforcementRules IGNORE skips the policy', policies: [pol('p', [deny('true', 0, 'd')], { enforcementRules: [{ condition: { match: 'ctx.request.http.method == "GET"' }, effect: 'IGNORE' }] }), pol('a', [allow('true', 0, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'enforcementRules ENFORCE keeps the policy', policies: [pol('p', [deny('true', 0, 'd')], { enforcementRules: [{ condition: { match: 'ctx.request.http.method == "GET"' }, effect: 'ENFORCE' }] }), pol('a', [allow('true')])], ctx: ctx([]), effect: 'DENY', reason: 'RULE', rule: 'd' },
  { name: 'ENFORCE-only rules that do not match skip the policy', policies: [pol('p', [deny('true', 0, 'd')], { enforcementRules: [{ condition: { match: 'ctx.request.http.method == "POST"' }, effect: 'ENFORCE' }] }), pol('a', [allow('true', 0, 'a')])], ctx: ctx([]), effect: 'ALLOW', reason: 'RULE', rule: 'a' },
  { name: 'policy attrs are visible as attrs', policies: [pol('p', [allow('attrs.team in ctx.user.spec.groups', 0, 't')], { attrs: { team: 'dev' } })], ctx: ctx(['dev']), effect: 'ALLOW', reason: 'RULE', rule: 't' },
  { name: 'hasAll with two arguments', policies: [pol('p', [allow('ctx.user.spec.groups.hasAll("dev", "ops")')])], ctx: ctx(['dev', 'ops']), effect: 'ALLOW', reason: 'RULE' },
  { name: 'hasAll fails with one missing', policies: [pol('p', [allow('ctx.user.spec.groups.hasAll("dev", "ops")')])], ctx: ctx(['dev']), effect: 'DENY', reason: 'NO_POLICY_MATCH' },
  { name: 'hasAny with a list', policies: [pol('p', [allow('ctx.user.spec.groups.hasAny(["x", "ops"])')])], ctx: ctx(['ops']), effect: 'ALLOW', reason: 'RULE' },
  { name: 'JSON number compared with an int literal', policies: [pol('p', [deny('ctx.request.http.bodyMap.amount > 10000', 0, 'big'), allow('true')])], ctx: ctx([], http('POST', '/t', {}, { amount: 20000 })), effect: 'DENY', reason: 'RULE', rule: 'big' },
  { name: 'double equals int (cel-spec)', policies: [pol('p', [allow('ctx.request.http.bodyMap.age == 18')])], ctx: ctx([], http('POST', '/t', {}, { age: 18 })), effect: 'ALLOW', reason: 'RULE' },
  { name: 'startsWith on the path', policies: [pol('p', [allow('ctx.request.http.path.startsWith("/stable")')])], ctx: ctx([], http('GET', '/stable/x')), effect: 'ALLOW', reason: 'RULE' },
  { name: 'matches with a regex', policies: [pol('p', [allow('ctx.request.http.path.matches("^/v[0-9]+/")')])], ctx: ctx([], http('GET', '/v2/x')), effect: 'ALLOW', reason: 'RULE' },
  { name: 'toLower on a header', policies: [pol('p', [allow('ctx.request.http.headers["x-env"].toLower() == "prod"')])], ctx: ctx([], http('GET', '/', { 'x-env': 'PROD' })), effect: 'ALLOW', reason: 'RULE' },
  { name: 'net.isIPInRange', policies: [pol('p', [allow('net.isIPInRange(ctx.request.ip, "100.65.0.0/16")')])], ctx: { request: { ip: '100.65.3.4' } }, effect: 'ALLOW', reason: 'RULE' },
  { name: 'json.parse of a string', policies: [pol('p', [allow('json.parse(ctx.request.raw).ok == true')])], ctx: { request: { raw: '{"ok": true}' } }, effect: 'ALLOW', reason: 'RULE' },
  { name: 'gRPC method for the Core API', policies: [pol('p', [allow('ctx.request.grpc.service == "postern.core.v1.CoreService" && ctx.request.grpc.method in ["Get", "List"]')])], ctx: { request: { grpc: { service: 'postern.core.v1.CoreService', method: 'Get' } } }, effect: 'ALLOW', reason: 'RULE' },
  { name: 'pre-check failure denies before rules', policies: [pol('p', [allow('true')])], ctx: ctx([]), effect: 'DENY', reason: 'PRE_CHECK', preCheck: 'SESSION_EXPIRED' },
];

describe('decision table', () => {
  for (const c of cases) {
    it(c.name, () => {
      const d = decide(c.policies, c.ctx, c.preCheck);
      assert.equal(d.effect, c.effect);
      assert.equal(d.reason.type, c.reason);
      if (c.rule) assert.equal(d.reason.rule, c.rule);
      if (c.preCheck) assert.equal(d.reason.detail, c.preCheck);
    });
  }
  it('has at least 40 cases', () => assert.ok(cases.length >= 40));

  it('gives every decision by a rule the same frozen reason, and a new one when the rule changes', () => {
    const policies = [pol('one', [deny('false')]), pol('two', [allow('true', 0, 'ok')])];
    const [a, b] = [decide(policies, ctx([])), decide(policies, ctx([]))];
    assert.equal(a.reason, b.reason);
    assert.ok(Object.isFrozen(a.reason));
    assert.deepEqual(a.reason, { type: 'RULE', policy: 'two', attachedTo: 'Service/s.default', rule: 'ok', priority: 0 });
    // The same policy source object with its rule renamed and reprioritised in place.
    policies[1]!.spec.rules[0] = allow('true', -1, 'renamed');
    assert.deepEqual(decide(policies, ctx([])).reason, { type: 'RULE', policy: 'two', attachedTo: 'Service/s.default', rule: 'renamed', priority: -1 });
  });

  it('explains every rule in order, with the decider and the rules not reached', () => {
    const d = decide([pol('p', [allow('true', 1, 'late'), deny('false', 0, 'd'), allow('"dev" in ctx.user.spec.groups', 0, 'a')])], ctx(['dev']), undefined, { explain: true });
    assert.deepEqual(d.trace!.map((t) => [t.rule, t.matched]), [['d', false], ['a', true], ['late', undefined]]);
  });
});

describe('CEL compile and helpers', () => {
  it('compiles once per expression (same function back)', () => {
    assert.equal(compileCel('1 == 1'), compileCel('1 == 1'));
  });
  it('reports the column of a syntax error', () => {
    assert.throws(() => compileCel('ctx.foo('), (e: unknown) => e instanceof CelCompileError && e.column === 9);
  });
  it('finds every bad expression in a resource with its path', () => {
    const svc = { kind: 'Service', metadata: { name: 's' }, spec: { authorization: { inlinePolicies: [{ spec: { rules: [{ effect: 'ALLOW', priority: 0, condition: { all: { of: [{ match: 'true' }, { match: '1 +' }] } } }] } }] }, dynamicConfig: { configs: [], rules: [{ condition: { not: '((' }, configName: 'x' }] } } } as AnyResource;
    assert.deepEqual(celIssues(svc).map((i) => i.path), ['spec.authorization.inlinePolicies[0].spec.rules[0].condition.all.of[1].match', 'spec.dynamicConfig.rules[0].condition.not']);
  });
  it('checks IP ranges for v4 and v6', () => {
    assert.ok(ipInRange('100.65.1.2', '100.64.0.0/10'));
    assert.ok(!ipInRange('100.128.0.1', '100.64.0.0/10'));
    assert.ok(ipInRange('fd00:1::5', 'fd00:1::/64'));
    assert.ok(!ipInRange('fd00:2::5', 'fd00:1::/64'));
    assert.ok(!ipInRange('nonsense', '10.0.0.0/8'));
  });
});

describe('gathering and pre-checks', () => {
  const r = (kind: string, name: string, spec: Record<string, unknown>, status?: Record<string, unknown>): AnyResource => ({ kind, metadata: { name }, spec, ...(status ? { status } : {}) });
  it('collects named and inline policies from every attachment, and reports missing ones', () => {
    const lookup = (n: string) => (n === 'known' ? r('Policy', 'known', { rules: [] }) : undefined);
    const { policies, missing } = gatherPolicies(
      {
        clusterConfig: r('ClusterConfig', 'default', { authorization: { policies: ['known'] } }),
        service: r('Service', 's.default', { authorization: { inlinePolicies: [{ spec: { rules: [] } }] } }),
        user: r('User', 'u', { authorization: { policies: ['gone'] } }),
        groups: [r('Group', 'g', { authorization: { inlinePolicies: [{ name: 'gi', spec: { rules: [] } }] } })],
      },
      lookup,
    );
    assert.deepEqual(policies.map((p) => `${p.attachedTo}:${p.name}`), ['ClusterConfig/default:known', 'Service/s.default:inline[0]', 'Group/g:gi']);
    assert.deepEqual(missing, ['gone']);
  });
  it('pre-checks sessions and users in order', () => {
    const now = new Date('2026-01-01T00:00:00Z');
    const u = r('User', 'u', { type: 'HUMAN' });
    const s = (spec: Record<string, unknown>, status: Record<string, unknown> = { type: 'CLIENT' }) => r('Session', 's', spec, status);
    assert.equal(preCheck({ session: s({ state: 'ACTIVE' }), user: u, now }), undefined);
    assert.equal(preCheck({ session: s({ state: 'REJECTED' }), user: u, now }), 'SESSION_NOT_ACTIVE');
    assert.equal(preCheck({ session: s({ expiresAt: '2025-12-31T00:00:00Z' }), user: u, now }), 'SESSION_EXPIRED');
    assert.equal(preCheck({ session: s({}), user: u, now, accessTokenExpiresAt: new Date('2025-12-31T23:00:00Z') }), 'ACCESS_TOKEN_EXPIRED');
    assert.equal(preCheck({ session: s({}), user: r('User', 'u', { type: 'HUMAN', isDisabled: true }), now }), 'USER_DISABLED');
    assert.equal(preCheck({ session: s({}, { type: 'CLIENTLESS' }), user: u, now, service: r('Service', 'x', {}) }), 'CLIENTLESS_ON_PRIVATE_SERVICE');
    assert.equal(preCheck({ session: s({}, { type: 'CLIENTLESS' }), user: u, now, service: r('Service', 'x', { isPublic: true }) }), undefined);
  });
});
