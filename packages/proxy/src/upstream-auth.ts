import { createHash } from 'node:crypto';
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import { request } from 'undici';
import type { Route } from './routes.js';

/** A Secret's value by name; undefined when it does not exist. */
export type SecretLookup = (name: string) => string | undefined;

export class UpstreamAuthError extends Error {}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/**
 * Puts the upstream's credentials on the request, from Secrets: the caller never sees them and
 * they are never logged. OAuth2 tokens are fetched once, cached until shortly before expiry,
 * with one fetch in flight per client at a time.
 */
export class UpstreamAuth {
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inFlight = new Map<string, Promise<CachedToken>>();

  constructor(private readonly secret: SecretLookup, private readonly now: () => number = Date.now) {}

  private need(name: string): string {
    const v = this.secret(name);
    if (v === undefined) throw new UpstreamAuthError(`Secret "${name}" is missing`);
    return v;
  }

  /** Headers to set on the upstream request (names lower-case). */
  async headers(route: Route, req: { method: string; url: URL; headers: Record<string, string>; body?: Buffer | undefined }): Promise<Record<string, string>> {
    const a = route.auth;
    if (!a) return {};
    if (a.bearer) return { authorization: `Bearer ${this.need(a.bearer.fromSecret)}` };
    if (a.basic) return { authorization: `Basic ${Buffer.from(`${a.basic.username}:${this.need(a.basic.password.fromSecret)}`).toString('base64')}` };
    if (a.custom) return { [a.custom.header.toLowerCase()]: this.need(a.custom.value.fromSecret) };
    if (a.oauth2ClientCredentials) return { authorization: `Bearer ${(await this.oauth2(a.oauth2ClientCredentials)).token}` };
    if (a.sigv4) return this.sigv4(a.sigv4, req);
    return {};
  }

  private async oauth2(c: { tokenURL: string; clientID: string; clientSecret: { fromSecret: string }; scopes?: string[] | undefined }): Promise<CachedToken> {
    const secret = this.need(c.clientSecret.fromSecret);
    // The key includes a hash of the secret: rotating the Secret fetches a new token.
    const key = `${c.tokenURL}|${c.clientID}|${(c.scopes ?? []).join(' ')}|${createHash('sha256').update(secret).digest('base64url')}`;
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > this.now()) return cached;
    let pending = this.inFlight.get(key);
    if (!pending) {
      pending = this.fetchToken(c, secret).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, pending);
    }
    const t = await pending;
    this.tokens.set(key, t);
    return t;
  }

  private async fetchToken(c: { tokenURL: string; clientID: string; scopes?: string[] | undefined }, secret: string): Promise<CachedToken> {
    const form = new URLSearchParams({ grant_type: 'client_credentials', ...(c.scopes?.length ? { scope: c.scopes.join(' ') } : {}) });
    const res = await request(c.tokenURL, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${encodeURIComponent(c.clientID)}:${encodeURIComponent(secret)}`).toString('base64')}`,
        accept: 'application/json',
      },
      body: form.toString(),
      headersTimeout: 10_000,
      bodyTimeout: 10_000,
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new UpstreamAuthError(`OAuth2 token endpoint answered ${res.statusCode}`);
    let body: { access_token?: string; expires_in?: number };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new UpstreamAuthError('OAuth2 token endpoint answered with something other than JSON');
    }
    if (!body.access_token) throw new UpstreamAuthError('OAuth2 token endpoint gave no access_token');
    const lifeMs = (body.expires_in ?? 300) * 1000;
    // Refresh a little before expiry (10% of the life, at most a minute).
    return { token: body.access_token, expiresAt: this.now() + lifeMs - Math.min(60_000, lifeMs / 10) };
  }

  private async sigv4(c: { accessKeyID: string; secretAccessKey: { fromSecret: string }; region: string; service: string }, req: { method: string; url: URL; headers: Record<string, string>; body?: Buffer | undefined }): Promise<Record<string, string>> {
    const signer = new SignatureV4({
      credentials: { accessKeyId: c.accessKeyID, secretAccessKey: this.need(c.secretAccessKey.fromSecret) },
      region: c.region,
      service: c.service,
      sha256: Sha256,
    });
    const query: Record<string, string> = {};
    for (const [k, v] of req.url.searchParams) query[k] = v;
    // A streamed body cannot be hashed before it is sent: sign it as UNSIGNED-PAYLOAD.
    const payloadHeader: Record<string, string> = req.body ? {} : { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' };
    const headers: Record<string, string> = { host: req.url.host, ...payloadHeader };
    for (const name of ['content-type', 'content-length']) if (req.headers[name]) headers[name] = req.headers[name]!;
    const signed = await signer.sign({
      method: req.method,
      protocol: req.url.protocol,
      hostname: req.url.hostname,
      ...(req.url.port ? { port: Number(req.url.port) } : {}),
      path: req.url.pathname,
      query,
      headers,
      ...(req.body ? { body: req.body } : {}),
    });
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(signed.headers)) if (k.toLowerCase() !== 'host') out[k.toLowerCase()] = String(v);
    return out;
  }
}
