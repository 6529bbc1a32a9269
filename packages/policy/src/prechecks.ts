import type { AnyResource } from '@postern/apis';

/** Codes of the checks made before any policy rule, in the order they are made. */
export const preCheckCodes = ['SESSION_NOT_ACTIVE', 'SESSION_EXPIRED', 'ACCESS_TOKEN_EXPIRED', 'USER_DISABLED', 'CLIENTLESS_ON_PRIVATE_SERVICE'] as const;
export type PreCheckCode = (typeof preCheckCodes)[number];

/**
 * `Date.parse` of an expiresAt, remembered by the text (the cache hands the same string on every
 * request, and parsing it showed in the request path's profile). Bounded: cleared when full.
 */
const expiries = new Map<string, number>();
function expiry(spec: { expiresAt: string }): number {
  let at = expiries.get(spec.expiresAt);
  if (at === undefined) {
    at = Date.parse(spec.expiresAt);
    if (expiries.size >= 10_000) expiries.clear();
    expiries.set(spec.expiresAt, at);
  }
  return at;
}

/**
 * The checks REFERENCE.md makes before policies: an inactive or expired session, an expired
 * access token, a disabled user, a CLIENTLESS session on a non-public Service. Undefined: all pass.
 * `accessTokenExpiresAt` is the expiry of the token presented (undefined when identity came from a tunnel).
 */
export function preCheck(input: {
  session: AnyResource;
  user: AnyResource;
  now: Date;
  accessTokenExpiresAt?: Date | undefined;
  service?: AnyResource | undefined;
}): PreCheckCode | undefined {
  const sessionSpec = (input.session.spec ?? {}) as { state?: string; expiresAt?: string };
  if ((sessionSpec.state ?? 'ACTIVE') !== 'ACTIVE') return 'SESSION_NOT_ACTIVE';
  if (sessionSpec.expiresAt && expiry(sessionSpec as { expiresAt: string }) <= input.now.getTime()) return 'SESSION_EXPIRED';
  if (input.accessTokenExpiresAt && input.accessTokenExpiresAt.getTime() <= input.now.getTime()) return 'ACCESS_TOKEN_EXPIRED';
  if ((input.user.spec as { isDisabled?: boolean } | undefined)?.isDisabled) return 'USER_DISABLED';
  const type = (input.session.status as { type?: string } | undefined)?.type;
  if (input.service && type === 'CLIENTLESS' && !(input.service.spec as { isPublic?: boolean } | undefined)?.isPublic) return 'CLIENTLESS_ON_PRIVATE_SERVICE';
  return undefined;
}
