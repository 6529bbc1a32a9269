import assert from 'node:assert/strict';
import { connect as h2connect } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { credentials, loadPackageDefinition, Metadata, Server, ServerCredentials, status, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { startTestCluster, type TestCluster } from '../harness/index.js';

const proto = loadPackageDefinition(loadSync(join(import.meta.dirname, '../../e2e/fixtures/greeter.proto'))) as never as {
  test: { greeter: { Greeter: (new (address: string, creds: unknown, opts?: object) => GreeterClient) & { service: never } } };
};
interface GreeterClient {
  echo(req: { text: string }, md: Metadata, cb: (err: ServiceError | null, res: { text: string }) => void): void;
  count(req: { text: string }, md: Metadata): NodeJS.EventEmitter;
  fail(req: { text: string }, md: Metadata, cb: (err: ServiceError | null) => void): void;
  close(): void;
}

/** gRPC through the proxy: HTTP/2 both ways, trailers (grpc-status) intact, policy on ctx.request.grpc. */
describe('proxy: gRPC mode', () => {
  let tc: TestCluster;
  let upstream: Server;
  let client: GreeterClient;
  let token: string;
  let privatePort: number;
  const seenUsers: string[] = [];

  before(async () => {
    upstream = new Server();
    upstream.addService(proto.test.greeter.Greeter.service, {
      echo: (call: { request: { text: string }; metadata: Metadata }, cb: (e: null, r: { text: string }) => void) => {
        seenUsers.push(String(call.metadata.get('x-postern-user')[0]));
        cb(null, { text: `echo ${call.request.text}` });
      },
      count: (call: { request: { text: string }; write(m: { text: string }): void; end(): void }) => {
        for (let i = 1; i <= 3; i++) call.write({ text: `${call.request.text} ${i}` });
        call.end();
      },
      fail: (_call: unknown, cb: (e: Partial<ServiceError>) => void) => cb({ code: status.FAILED_PRECONDITION, details: 'not today' }),
    });
    const port = await new Promise<number>((resolve, reject) => upstream.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    tc = await startTestCluster();
    await tc.login('root');
    const yaml = `kind: User
metadata: {name: gina}
spec: {type: WORKLOAD}
---
kind: Service
metadata: {name: greeter}
spec:
  mode: GRPC
  isPublic: true
  config:
    upstream: {url: "http://127.0.0.1:${port}"}
    http: {isUpstreamHTTP2: true}
  authorization:
    inlinePolicies:
      - spec:
          rules:
            - name: no-count
              effect: DENY
              condition: {match: 'ctx.request.grpc.method == "Count" && ctx.user.metadata.name == "gina"'}
            - effect: ALLOW
              condition: {match: 'ctx.request.grpc.service == "test.greeter.Greeter"'}
`;
    const r = await tc.cli('posternctl', ['apply', '-'], { stdin: yaml });
    assert.equal(r.code, 0, r.err);
    token = await tc.accessToken('gina');
    client = new proto.test.greeter.Greeter(tc.cluster.publicAddress!, credentials.createSsl(Buffer.from(tc.cluster.caPem!)), {
      'grpc.ssl_target_name_override': 'greeter.example.test',
      'grpc.default_authority': 'greeter.example.test',
    });
    privatePort = await tc.cluster.proxy!.listenService('greeter.default', '127.0.0.1', 0);
    await tc.connectedSession('root', '127.0.90.2');
  });
  after(async () => {
    client?.close();
    await tc?.stop();
    upstream?.forceShutdown();
  });

  const md = () => {
    const m = new Metadata();
    m.set('authorization', `Bearer ${token}`);
    return m;
  };

  it('carries a unary call to a real gRPC server over the public HTTPS listener', async () => {
    const res = await new Promise<{ text: string }>((resolve, reject) => client.echo({ text: 'hi' }, md(), (e, r) => (e ? reject(e) : resolve(r))));
    assert.equal(res.text, 'echo hi');
    assert.equal(seenUsers.at(-1), 'gina');
  });

  it('passes grpc-status trailers through', async () => {
    const err = await new Promise<ServiceError>((resolve) => client.fail({ text: 'x' }, md(), (e) => resolve(e!)));
    assert.equal(err.code, status.FAILED_PRECONDITION);
    assert.equal(err.details, 'not today');
  });

  it('authorizes per gRPC method: the denied method fails with PERMISSION_DENIED, without a token UNAUTHENTICATED', async () => {
    const denied = await new Promise<ServiceError>((resolve) => {
      const s = client.count({ text: 'n' }, md());
      s.on('error', resolve);
      s.on('data', () => {});
    });
    assert.equal(denied.code, status.PERMISSION_DENIED);
    const none = await new Promise<ServiceError>((resolve) => client.echo({ text: 'x' }, new Metadata(), (e) => resolve(e!)));
    assert.equal(none.code, status.UNAUTHENTICATED);
  });

  it('serves the private h2c listener to a tunnel address, streaming', async () => {
    const session = h2connect(`http://127.0.0.1:${privatePort}`, { createConnection: () => netConnect({ host: '127.0.0.1', port: privatePort, localAddress: '127.0.90.2' }) });
    const text = 'up';
    const msg = Buffer.concat([Buffer.from([0x0a, text.length]), Buffer.from(text)]);
    const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
    const stream = session.request({ ':method': 'POST', ':path': '/test.greeter.Greeter/Count', 'content-type': 'application/grpc', te: 'trailers' });
    stream.end(frame);
    const chunks: Buffer[] = [];
    const trailers = await new Promise<Record<string, unknown>>((resolve, reject) => {
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('trailers', resolve);
      stream.on('error', reject);
    });
    session.close();
    assert.equal(trailers['grpc-status'], '0');
    const body = Buffer.concat(chunks).toString('latin1');
    for (const i of [1, 2, 3]) assert.ok(body.includes(`up ${i}`), body);
  });
});
