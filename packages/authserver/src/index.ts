/**
 * @postern/authserver — login and tokens: AUTH_TOKEN and ACCESS_TOKEN Credentials, Sessions with
 * Ed25519-signed access and refresh tokens, rotation of token IDs on every (re)authentication,
 * logout, lifetimes, signing-key rotation. Imports @postern/apis and @postern/store only.
 */
export { AuthServer, authKinds, verifyAccessToken, type AccessTokenVerifier, type CreatedCredential, type Identity, type SessionTokens } from './authserver.js';
export { ensureSigningKeys, type KeyPolicy } from './keys.js';
export { KeyRing, generateKey, newTokenId, type StoredKey, type TokenClaims, type TokenType } from './tokens.js';
export { lifetimesFor, type Lifetimes } from './lifetimes.js';
