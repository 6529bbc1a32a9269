import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { canonicalName, decodeDocuments, encodeYaml, errorCodes, kindFromAlias, parseResources, splitNamespaced } from '../src/index.js';

const examples = join(import.meta.dirname, '../../../../../shared/examples');
const repo = join(import.meta.dirname, '../../../..');

describe('codec and names', () => {
  it('decodes every shared example without an issue', () => {
    const files = readdirSync(examples).filter((f) => f.endsWith('.yaml'));
    assert.ok(files.length >= 6);
    for (const f of files) {
      const { resources, issues } = parseResources(readFileSync(join(examples, f), 'utf8'), f);
      assert.deepEqual(issues, [], f);
      assert.ok(resources.length > 0, f);
    }
  });

  it('round-trips through YAML', () => {
    const { resources } = parseResources(readFileSync(join(examples, '05-service-body-policy.yaml'), 'utf8'));
    const again = parseResources(encodeYaml(resources.map((r) => r.resource)));
    assert.deepEqual(again.resources.map((r) => r.resource), resources.map((r) => r.resource));
  });

  it('reads JSON, lists and kind: List', () => {
    const json = JSON.stringify([{ kind: 'Group', metadata: { name: 'a' } }, { kind: 'Group', metadata: { name: 'b' } }]);
    assert.equal(parseResources(json).resources.length, 2);
    const list = 'kind: List\nitems:\n  - kind: Group\n    metadata: {name: a}\n  - kind: Group\n    metadata: {name: B}\n';
    const { issues } = parseResources(list);
    assert.equal(issues[0]?.code, 'ERR_INVALID_NAME');
    assert.equal(issues[0]?.line, 6);
    assert.equal(decodeDocuments('---\n---\n').documents.length, 0);
  });

  it('names Services with their namespace', () => {
    assert.equal(canonicalName('Service', 'inventory'), 'inventory.default');
    assert.equal(canonicalName('Service', 'accounts.finance'), 'accounts.finance');
    assert.equal(canonicalName('User', 'alice'), 'alice');
    assert.deepEqual(splitNamespaced('accounts.finance'), { name: 'accounts', namespace: 'finance' });
    assert.equal(kindFromAlias('svc'), 'Service');
    assert.equal(kindFromAlias('Policies'), 'Policy');
    assert.equal(kindFromAlias('nope'), undefined);
  });

  it('documents every error code in docs/errors.md', () => {
    const doc = readFileSync(join(repo, 'docs/errors.md'), 'utf8');
    for (const code of Object.keys(errorCodes)) assert.ok(doc.includes(`\`${code}\``), `${code} is missing from docs/errors.md`);
  });
});
