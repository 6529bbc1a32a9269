import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { PosternError } from '@postern/apis';

/** A stored signing key. Private keys live only in the store's internal table, never in resources. */
export interface StoredKey {
  kid: string;
  createdAt: string;
  publicKeyPem: string;
  privateKeyPem: string;
}

export type TokenType = 'auth' | 'access' | 'refresh';

/** What a Postern token says. `sub` is a Credential uid (auth) or a Session uid (access, refresh). */
export interface TokenClaims {
  typ: TokenType;
  sub: string;
  /** The token ID of the credential or session when issued; a rotation makes older tokens invalid. */
  tid: string;
  iat: number;
  /** Seconds since the epoch; absent for auth tokens without expiry. */
  exp?: number;
}

export function generateKey(now: Date): StoredKey {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  return {
    kid: randomBytes(8).toString('hex'),
    createdAt: now.toISOString(),
    publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

export function newTokenId(): string {
  return randomBytes(16).toString('base64url');
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64url');

/**
 * Signs and verifies compact JWS tokens (EdDSA / Ed25519). The newest key signs; every key still
 * in the ring verifies, so a rotation does not log anyone out.
 */
export class KeyRing {
  private readonly publicKeys = new Map<string, KeyObject>();
  private readonly signer: { kid: string; key: KeyObject } | undefined;

  /** Keys without a private part (`privateKeyPem` empty) make a ring that only verifies. */
  constructor(keys: readonly StoredKey[]) {
    const newest = [...keys].sort((a, b) => a.createdAt.localeCompare(b.createdAt)).at(-1);
    if (!newest) throw new Error('KeyRing needs at least one key');
    for (const k of keys) this.publicKeys.set(k.kid, createPublicKey(k.publicKeyPem));
    this.signer = newest.privateKeyPem ? { kid: newest.kid, key: createPrivateKey(newest.privateKeyPem) } : undefined;
  }

  sign(claims: TokenClaims): string {
    if (!this.signer) throw new Error('this key ring only verifies (it holds no private key)');
    const head = b64(JSON.stringify({ alg: 'EdDSA', typ: 'JWT', kid: this.signer.kid }));
    const body = b64(JSON.stringify(claims));
    const sig = sign(null, Buffer.from(`${head}.${body}`), this.signer.key);
    return `${head}.${body}.${b64(sig)}`;
  }

  /**
   * Tokens whose signature was already checked: an Ed25519 verification costs ~120 µs, and a
   * client sends the same access token on every call. Bounded; claims are immutable, and
   * revocation is decided by the session's token ID, never by this cache.
   */
  private readonly verified = new Map<string, TokenClaims>();
  private static readonly maxVerified = 10_000;

  /** Checks the signature and the type; expiry is the caller's to check against its clock. */
  verify(token: string, typ: TokenType): TokenClaims {
    const hit = this.verified.get(token);
    if (hit && hit.typ === typ) return hit;
    const claims = this.verifyUncached(token, typ);
    if (this.verified.size >= KeyRing.maxVerified) this.verified.delete(this.verified.keys().next().value!);
    this.verified.set(token, claims);
    return claims;
  }

  private verifyUncached(token: string, typ: TokenType): TokenClaims {
    const invalid = (why: string) => new PosternError('ERR_TOKEN_INVALID', `the ${typ} token is invalid: ${why}`);
    const parts = token.trim().split('.');
    if (parts.length !== 3) throw invalid('it is not a Postern token');
    const [head, body, sig] = parts as [string, string, string];
    let header: { alg?: string; kid?: string };
    let claims: TokenClaims;
    try {
      header = JSON.parse(Buffer.from(head, 'base64url').toString('utf8')) as typeof header;
      claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as TokenClaims;
    } catch {
      throw invalid('it cannot be decoded');
    }
    if (header.alg !== 'EdDSA') throw invalid('unsupported algorithm');
    const key = header.kid ? this.publicKeys.get(header.kid) : undefined;
    if (!key) throw invalid('it was signed by a key this cluster does not know');
    if (!verify(null, Buffer.from(`${head}.${body}`), key, Buffer.from(sig, 'base64url'))) throw invalid('bad signature');
    if (claims.typ !== typ) throw invalid(`it is a ${claims.typ} token`);
    if (typeof claims.sub !== 'string' || typeof claims.tid !== 'string') throw invalid('missing claims');
    return claims;
  }
}
