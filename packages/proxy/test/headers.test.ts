import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ProxyRequest } from '../src/exchange.js';
import { twoHosts } from '../src/headers.js';

const req = (url: string, headers: Record<string, string>) => ({ url, headers }) as unknown as ProxyRequest;

describe('a request that names two hosts', () => {
  it('is an absolute-form target whose host is not Host, or a Host that is not :authority', () => {
    assert.match(twoHosts(req('http://admin.example.test/x', { host: 'public.example.test' }))!, /request target/);
    assert.match(twoHosts(req('http://admin.example.test/x', {}))!, /request target/, 'HTTP/1.0 without Host');
    assert.match(twoHosts(req('/x', { ':authority': 'a.example.test', host: 'b.example.test' }))!, /:authority/);
    assert.match(twoHosts(req('https://b.example.test/x', { ':authority': 'a.example.test' }))!, /request target/);
  });

  it('is not one host spelt in another case, nor an origin-form target', () => {
    assert.equal(twoHosts(req('HTTP://Api.Example.test:8080/x?y', { host: 'api.example.test:8080' })), undefined);
    assert.equal(twoHosts(req('/x', { host: 'anything' })), undefined);
    assert.equal(twoHosts(req('/x', { ':authority': 'A.example.test', host: 'a.example.test' })), undefined);
    assert.equal(twoHosts(req('/x', { ':authority': 'a.example.test' })), undefined);
  });
});
