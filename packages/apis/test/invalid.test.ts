import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseResources } from '../src/index.js';

/**
 * Table test: take a valid resource, change one thing, expect exactly these errors (code, field
 * path, line). Messages are for people and are not asserted.
 */
const validService = `kind: Service
metadata:
  name: inventory
spec:
  mode: HTTP
  port: 80
  config:
    upstream:
      url: http://127.0.0.1:9101
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - effect: ALLOW
              condition:
                match: '"dev" in ctx.user.spec.groups'
`;

interface Case {
  name: string;
  text: string;
  expect: { code: string; path?: string; line?: number }[];
}

const replace = (from: string, to: string) => {
  assert.ok(validService.includes(from), `fixture lacks ${from}`);
  return validService.replace(from, to);
};

const cases: Case[] = [
  { name: 'YAML syntax error', text: 'kind: Service\nmetadata: {name: x\n', expect: [{ code: 'ERR_SYNTAX', line: 3 }] },
  { name: 'duplicate key', text: 'kind: Group\nkind: Group\nmetadata: {name: x}\n', expect: [{ code: 'ERR_SYNTAX', line: 2 }] },
  { name: 'document is a scalar', text: 'just text\n', expect: [{ code: 'ERR_NOT_AN_OBJECT', path: '' }] },
  { name: 'kind missing', text: 'metadata: {name: x}\nspec: {}\n', expect: [{ code: 'ERR_REQUIRED', path: 'kind' }] },
  { name: 'unknown kind with hint', text: 'kind: Servce\nmetadata: {name: x}\n', expect: [{ code: 'ERR_UNKNOWN_KIND', path: 'kind', line: 1 }] },
  { name: 'kind of wrong type', text: 'kind: 3\nmetadata: {name: x}\n', expect: [{ code: 'ERR_UNKNOWN_KIND', path: 'kind' }] },
  { name: 'metadata missing', text: 'kind: Group\nspec: {}\n', expect: [{ code: 'ERR_REQUIRED', path: 'metadata' }] },
  { name: 'name missing', text: 'kind: Group\nmetadata: {}\n', expect: [{ code: 'ERR_REQUIRED', path: 'metadata.name' }] },
  { name: 'upper-case name', text: replace('name: inventory', 'name: Inventory'), expect: [{ code: 'ERR_INVALID_NAME', path: 'metadata.name', line: 3 }] },
  { name: 'name with underscore', text: 'kind: User\nmetadata: {name: a_b}\nspec: {type: HUMAN}\n', expect: [{ code: 'ERR_INVALID_NAME', path: 'metadata.name' }] },
  { name: 'label longer than 63', text: `kind: Group\nmetadata: {name: ${'a'.repeat(64)}}\n`, expect: [{ code: 'ERR_INVALID_NAME', path: 'metadata.name' }] },
  { name: 'service name with two dots', text: replace('name: inventory', 'name: a.b.c'), expect: [{ code: 'ERR_INVALID_NAME', path: 'metadata.name' }] },
  { name: 'user name with a dot', text: 'kind: User\nmetadata: {name: a.b}\nspec: {type: HUMAN}\n', expect: [{ code: 'ERR_INVALID_NAME', path: 'metadata.name' }] },
  { name: 'unknown metadata field', text: replace('  name: inventory', '  name: inventory\n  lables: {a: b}'), expect: [{ code: 'ERR_UNKNOWN_FIELD', path: 'metadata.lables', line: 4 }] },
  { name: 'unknown spec field (typo)', text: replace('  mode: HTTP', '  mod: HTTP'), expect: [{ code: 'ERR_UNKNOWN_FIELD', path: 'spec.mod', line: 5 }, ] },
  { name: 'unknown top-level field', text: `${validService}extra: 1\n`, expect: [{ code: 'ERR_UNKNOWN_FIELD', path: 'extra', line: 17 }] },
  { name: 'port as string', text: replace('port: 80', 'port: "80"'), expect: [{ code: 'ERR_INVALID_TYPE', path: 'spec.port', line: 6 }] },
  { name: 'port out of range', text: replace('port: 80', 'port: 70000'), expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.port' }] },
  { name: 'port not an integer', text: replace('port: 80', 'port: 80.5'), expect: [{ code: 'ERR_INVALID_TYPE', path: 'spec.port' }] },
  { name: 'unknown mode', text: replace('mode: HTTP', 'mode: HTTPS'), expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.mode', line: 5 }] },
  { name: 'upstream url not a URL', text: replace('url: http://127.0.0.1:9101', 'url: not a url'), expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.config.upstream.url' }] },
  { name: 'upstream with url and loadbalance', text: replace('url: http://127.0.0.1:9101', 'url: http://a\n      loadbalance: {endpoints: [{url: http://b}]}'), expect: [{ code: 'ERR_ONE_OF', path: 'spec.config.upstream' }] },
  { name: 'no upstream at all', text: replace('    upstream:\n      url: http://127.0.0.1:9101\n', '    http: {}\n'), expect: [{ code: 'ERR_REQUIRED', path: 'spec.config.upstream' }] },
  { name: 'rule effect unknown', text: replace('effect: ALLOW', 'effect: PERMIT'), expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.authorization.inlinePolicies[0].spec.rules[0].effect', line: 14 }] },
  { name: 'rule priority above 4', text: replace('effect: ALLOW', 'effect: ALLOW\n              priority: 5'), expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.authorization.inlinePolicies[0].spec.rules[0].priority' }] },
  { name: 'rule without condition', text: replace("              condition:\n                match: '\"dev\" in ctx.user.spec.groups'\n", ''), expect: [{ code: 'ERR_REQUIRED', path: 'spec.authorization.inlinePolicies[0].spec.rules[0].condition' }] },
  { name: 'condition with two operators', text: replace("match: '\"dev\" in ctx.user.spec.groups'", "match: 'true'\n                matchAny: true"), expect: [{ code: 'ERR_ONE_OF', path: 'spec.authorization.inlinePolicies[0].spec.rules[0].condition' }] },
  { name: 'empty condition', text: replace("condition:\n                match: '\"dev\" in ctx.user.spec.groups'", 'condition: {}'), expect: [{ code: 'ERR_ONE_OF', path: 'spec.authorization.inlinePolicies[0].spec.rules[0].condition' }] },
  { name: 'policies not a list', text: replace('    inlinePolicies:', '    policies: ops-admin\n    inlinePolicies:'), expect: [{ code: 'ERR_INVALID_TYPE', path: 'spec.authorization.policies' }] },
  { name: 'isAnonymous without isPublic', text: replace('  port: 80', '  port: 80\n  isAnonymous: true'), expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.isAnonymous' }] },
  { name: 'two auth methods', text: replace('      url: http://127.0.0.1:9101', '      url: http://127.0.0.1:9101\n    http:\n      auth:\n        bearer: {fromSecret: a}\n        custom: {header: x, value: {fromSecret: b}}'), expect: [{ code: 'ERR_ONE_OF', path: 'spec.config.http.auth' }] },
  { name: 'bearer without fromSecret', text: replace('      url: http://127.0.0.1:9101', '      url: http://127.0.0.1:9101\n    http:\n      auth:\n        bearer: {}'), expect: [{ code: 'ERR_REQUIRED', path: 'spec.config.http.auth.bearer.fromSecret' }] },
  { name: 'dynamic rule names a missing config', text: 'kind: Service\nmetadata: {name: d}\nspec:\n  dynamicConfig:\n    configs: [{name: a, upstream: {url: "http://x"}}]\n    rules: [{condition: {matchAny: true}, configName: b}]\n', expect: [{ code: 'ERR_MISSING_REFERENCE', path: 'spec.dynamicConfig.rules[0].configName', line: 6 }] },
  { name: 'user type missing', text: 'kind: User\nmetadata: {name: u}\nspec: {email: u@example.test}\n', expect: [{ code: 'ERR_REQUIRED', path: 'spec.type' }] },
  { name: 'user email invalid', text: 'kind: User\nmetadata: {name: u}\nspec: {type: HUMAN, email: nope}\n', expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.email' }] },
  { name: 'duration with two units', text: 'kind: User\nmetadata: {name: u}\nspec: {type: HUMAN, session: {clientDuration: {hours: 1, days: 2}}}\n', expect: [{ code: 'ERR_ONE_OF', path: 'spec.session.clientDuration' }] },
  { name: 'duration with unknown unit', text: 'kind: User\nmetadata: {name: u}\nspec: {type: HUMAN, session: {clientDuration: {years: 1}}}\n', expect: [{ code: 'ERR_UNKNOWN_FIELD', path: 'spec.session.clientDuration.years' }, { code: 'ERR_ONE_OF', path: 'spec.session.clientDuration' }] },
  { name: 'secret with value and valueBytes', text: 'kind: Secret\nmetadata: {name: s}\nspec: {data: {value: a, valueBytes: YQ==}}\n', expect: [{ code: 'ERR_ONE_OF', path: 'spec.data' }] },
  { name: 'credential with bad type', text: 'kind: Credential\nmetadata: {name: c}\nspec: {type: PASSWORD, user: u}\n', expect: [{ code: 'ERR_INVALID_VALUE', path: 'spec.type' }] },
  { name: 'policy spec missing', text: 'kind: Policy\nmetadata: {name: p}\n', expect: [{ code: 'ERR_REQUIRED', path: 'spec' }] },
  { name: 'identity provider with two kinds', text: 'kind: IdentityProvider\nmetadata: {name: i}\nspec:\n  oidc: {issuerURL: "https://a", clientID: c, clientSecret: {fromSecret: s}}\n  github: {clientID: c, clientSecret: {fromSecret: s}}\n', expect: [{ code: 'ERR_ONE_OF', path: 'spec' }] },
];

describe('invalid documents: exact code, path and line', () => {
  for (const c of cases) {
    it(c.name, () => {
      const { issues } = parseResources(c.text, 'case.yaml');
      const got = issues.map((i) => ({ code: i.code, path: i.path, line: i.line }));
      assert.equal(got.length, c.expect.length, `expected ${JSON.stringify(c.expect)}, got ${JSON.stringify(got)}`);
      c.expect.forEach((e, idx) => {
        const g = got.find((x) => x.code === e.code && (e.path === undefined || x.path === e.path));
        assert.ok(g, `missing ${JSON.stringify(e)} in ${JSON.stringify(got)} (${idx})`);
        if (e.line !== undefined) assert.equal(g.line, e.line, `line of ${e.code}`);
      });
      for (const i of issues) assert.equal(i.file, 'case.yaml');
    });
  }

  it('has at least 30 cases', () => assert.ok(cases.length >= 30));

  it('reports every problem of every document at once', () => {
    const text = `${replace('mode: HTTP', 'mode: NOPE').replace('port: 80', 'port: "x"')}---\nkind: Servce\nmetadata: {name: y}\n`;
    const codes = parseResources(text).issues.map((i) => i.code).sort();
    assert.deepEqual(codes, ['ERR_INVALID_TYPE', 'ERR_INVALID_VALUE', 'ERR_UNKNOWN_KIND']);
  });

  it('suggests the closest field for a typo', () => {
    const [issue] = parseResources(replace('  mode: HTTP', '  mdoe: HTTP')).issues;
    assert.equal(issue?.code, 'ERR_UNKNOWN_FIELD');
    assert.match(issue!.message, /did you mean "mode"/);
  });
});
