import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RecordingUpstream, startLoggedIn, type LoggedInPosternd } from '../harness/index.js';

/** Real curl; resolves with its exit code and output (never rejects). */
function curl(args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-s', '-i', '--max-time', '15', ...args], (err, stdout) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout }));
  });
}

/**
 * posternd stopping (SIGTERM) while the proxy has answers in progress, with the real binary and
 * curl: those answers arrive whole, new connections are refused meanwhile, and the process still
 * exits 0 — as a rolling restart behind a load balancer needs.
 */
for (const listener of ['TLS (HTTP/1.1 and HTTP/2)', 'plaintext (the proxy\'s own HTTP/1.1 server)'] as const) {
  const tls = listener.startsWith('TLS');
  describe(`proxy: a stopping posternd finishes the answers in progress, ${listener}`, () => {
    const domain = tls ? 'drain.test' : 'drainplain.test';
    let c: LoggedInPosternd;
    let up: RecordingUpstream;
    let token = '';
    let caFile = '';
    // The upstream answers 2.5 s after a request arrives (on /stream: its head and a first line
    // at once, the rest then): time to stop posternd in between.
    before(async () => {
      up = await RecordingUpstream.start(0, 'slow', (req, res) => {
        if (req.url === '/stream') res.write('the first line\n');
        setTimeout(() => res.end('the slow answer\n'), 2500);
      });
      c = await startLoggedIn(domain, tls ? [] : ['--public-plaintext']);
      const r = await c.ctl(
        ['apply', '-'],
        `kind: User\nmetadata: {name: dana}\nspec: {type: HUMAN}\n---\nkind: Service\nmetadata: {name: api}\nspec:\n  isPublic: true\n  config: {upstream: {url: "http://127.0.0.1:${up.port}"}}\n  authorization: {inlinePolicies: [{spec: {rules: [{effect: ALLOW, condition: {match: 'ctx.user.metadata.name == "dana"'}}]}}]}\n`,
      );
      assert.equal(r.code, 0, r.err);
      token = (await c.ctl(['create', 'credential', '--user', 'dana', '--type', 'access-token'])).out.trim();
      caFile = join(c.dir, 'ca.pem');
      writeFileSync(caFile, c.ca);
    });

    after(async () => {
      await c?.stop();
      await up?.stop();
    });

    it('answers what is in progress, refuses new connections, and exits 0', async () => {
      const url = tls ? `https://api.${domain}:${c.port}/slow` : `http://127.0.0.1:${c.port}/slow`;
      const base = ['-H', `Authorization: Bearer ${token}`, ...(tls ? ['--cacert', caFile, '--resolve', `api.${domain}:${c.port}:127.0.0.1`] : ['-H', `Host: api.${domain}`])];
      const inProgress = [...(tls ? ['--http1.1', '--http2'] : ['--http1.1', '--http1.1']).map((v) => curl([...base, v, url])), curl([...base, '--http1.1', url.replace('/slow', '/stream')])];
      for (const end = Date.now() + 10_000; up.seen.length < 3; ) {
        assert.ok(Date.now() < end, 'the three requests reached the upstream');
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 200)); // the streamed answer's head reaches curl
      const t0 = Date.now();
      const stopped = c.d.stop();
      // While the two wait for their answers, the listener takes no new connection (curl: 7).
      let refused = false;
      for (const end = Date.now() + 1500; !refused && Date.now() < end; ) {
        refused = (await curl([...base, '--max-time', '1', url])).code === 7;
        if (!refused) await new Promise((r) => setTimeout(r, 50));
      }
      assert.ok(refused, 'a new connection is refused while posternd drains');
      assert.ok(Date.now() - t0 < 2200, 'checked before the slow answers were due');
      const [one, two, streamed] = await Promise.all(inProgress);
      for (const r of [one!, two!, streamed!]) {
        assert.equal(r.code, 0, `curl exit ${r.code}:\n${r.out}`);
        assert.match(r.out, /^HTTP\/(1\.1|2) 200/);
        assert.match(r.out, /the slow answer\n$/);
      }
      assert.match(streamed!.out, /the first line\nthe slow answer\n$/);
      // An HTTP/1.1 answer whose head left while draining tells the client not to reuse the connection.
      for (const r of [one!, two!]) if (r.out.startsWith('HTTP/1.1')) assert.match(r.out, /\r\nconnection: close\r\n/i);
      assert.equal(await stopped, 0, `posternd exits 0 after draining; its log:\n${c.d.logs().split('\n').slice(-8).join('\n')}`);
      // The answers were due ~2.4 s after the stop began; a connection left open after its answer
      // would hold the stop until a keep-alive timeout (5 s) or the 10 s cut.
      assert.ok(Date.now() - t0 < 5000, `stopped in ${Date.now() - t0} ms: with the answers, not at a timeout`);
    });
  });
}
