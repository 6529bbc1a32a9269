import type { AnyResource } from '@postern/apis';
import type { AccessTokenVerifier } from '@postern/authserver';
import type { ResourceCache } from '@postern/store';

/** Who is calling, as the proxy found out. */
export interface Caller {
  session: AnyResource;
  user: AnyResource;
  groups: AnyResource[];
  /** The groups' names joined by commas (the `x-postern-groups` header), worked out once per user. */
  groupNames?: string;
  /** Set when identity came from a token (public Services); the pre-checks look at it. */
  accessTokenExpiresAt?: Date;
  /** How the caller was identified. */
  via: 'tunnel-ip' | 'token';
}

/** `::ffff:127.0.0.1` → `127.0.0.1`. */
export function plainIp(ip: string | undefined): string {
  if (!ip) return '';
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/**
 * Maps tunnel source addresses to connected Sessions, kept current from the watch-fed cache:
 * the request path never touches the database. Lookup is one Map get, whatever the number of
 * sessions.
 */
export class IdentityIndex {
  private readonly byIp = new Map<string, string>();
  /** The addresses indexed for each session, so a change touches only that session's entries. */
  private readonly bySession = new Map<string, string[]>();
  private users = new WeakMap<AnyResource, { user: AnyResource; groups: AnyResource[]; groupNames: string }>();
  private readonly unsubscribe: () => void;

  constructor(private readonly cache: ResourceCache, private readonly auth: AccessTokenVerifier) {
    this.rebuild();
    this.unsubscribe = cache.onChange((ev) => {
      this.users = new WeakMap();
      if (ev.type === 'RESYNC') return this.rebuild();
      if (ev.resource.kind !== 'Session') return;
      // Drop the session's old addresses, then add the current ones (if still connected).
      const name = ev.resource.metadata.name;
      for (const ip of this.bySession.get(name) ?? []) if (this.byIp.get(ip) === name) this.byIp.delete(ip);
      this.bySession.delete(name);
      if (ev.type !== 'DELETED') this.index(ev.resource);
    });
  }

  private index(s: AnyResource): void {
    const st = s.status as { isConnected?: boolean; connection?: { addresses?: string[] } } | undefined;
    if (!st?.isConnected) return;
    const ips = (st.connection?.addresses ?? []).map((a) => plainIp(a.split('/')[0]));
    for (const ip of ips) this.byIp.set(ip, s.metadata.name);
    this.bySession.set(s.metadata.name, ips);
  }

  private rebuild(): void {
    this.byIp.clear();
    this.bySession.clear();
    for (const s of this.cache.list('Session')) this.index(s);
  }

  private withUser(session: AnyResource, via: Caller['via'], accessTokenExpiresAt?: Date): Caller | undefined {
    const found = this.userOf(session);
    if (!found) return undefined;
    const caller: Caller = { session, user: found.user, groups: found.groups, groupNames: found.groupNames, via };
    if (accessTokenExpiresAt) caller.accessTokenExpiresAt = accessTokenExpiresAt;
    return caller;
  }

  /**
   * A session's user and groups. Kept per session object: the cache replaces a resource's
   * object on every change, and any change clears what was kept.
   */
  private userOf(session: AnyResource): { user: AnyResource; groups: AnyResource[]; groupNames: string } | undefined {
    const kept = this.users.get(session);
    if (kept) return kept;
    const ref = (session.status as { userRef?: { name?: string; uid?: string } } | undefined)?.userRef;
    const user = ref?.name ? this.cache.get('User', ref.name) : undefined;
    if (!user || (ref?.uid && user.metadata.uid !== ref.uid)) return undefined;
    const groups = ((user.spec as { groups?: string[] }).groups ?? []).flatMap((g) => this.cache.get('Group', g) ?? []);
    const found = { user, groups, groupNames: groups.map((g) => g.metadata.name).join(',') };
    this.users.set(session, found);
    return found;
  }

  /** The caller behind a tunnel address, or undefined. */
  byAddress(ip: string): Caller | undefined {
    const name = this.byIp.get(plainIp(ip));
    const session = name ? this.cache.get('Session', name) : undefined;
    return session ? this.withUser(session, 'tunnel-ip') : undefined;
  }

  /** The caller an access token speaks for; throws the auth server's error when it is not valid. */
  byToken(token: string): Caller | undefined {
    const id = this.auth.verifyAccessToken(token);
    return this.withUser(id.session, 'token', id.accessTokenExpiresAt);
  }

  /** Number of tunnel addresses indexed (for metrics and tests). */
  get size(): number {
    return this.byIp.size;
  }

  close(): void {
    this.unsubscribe();
  }
}

/** The access token of a request to a public Service: `x-postern-auth`, cookie `postern_auth`, or `Authorization: Bearer`. */
export function tokenFromRequest(headers: Record<string, string | string[] | undefined>): string | undefined {
  const h = headers['x-postern-auth'];
  if (typeof h === 'string' && h) return h.trim();
  const cookie = headers.cookie;
  if (typeof cookie === 'string') {
    for (const part of cookie.split(';')) {
      const [k, ...v] = part.trim().split('=');
      if (k === 'postern_auth' && v.length) {
        try {
          return decodeURIComponent(v.join('='));
        } catch {
          return undefined; // not a token (a bad %-escape): the caller has no identity, 401
        }
      }
    }
  }
  const authz = headers.authorization;
  if (typeof authz !== 'string') return undefined;
  // The usual form first, without a regular expression over the whole token.
  if (authz.startsWith('Bearer ')) {
    const token = authz.slice(7);
    if (/^\S+$/.test(token)) return token;
  }
  const m = authz.match(/^Bearer\s+(\S+)$/i);
  return m?.[1];
}
