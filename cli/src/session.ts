import { isIP } from 'node:net';
import { PosternError, isPosternError } from '@postern/apis';
import { ApiClient } from '@postern/apiserver/client';
import { loadSession, resolveDomain, saveSession, type SavedSession } from './config.js';
import type { Io } from './io.js';

/** An API client for the logged-in session of a domain, refreshing the access token when it expires. */
export interface Connection {
  client: ApiClient;
  session: SavedSession;
  /** Runs a call; on an expired access token refreshes once (rotating both tokens) and retries. */
  call<T>(fn: (c: ApiClient) => Promise<T>): Promise<T>;
  close(): void;
}

/**
 * A client for the saved API address. When that address is an IP, TLS checks the certificate for
 * `api.<domain>` (which the cluster's certificate always names) and sends that as SNI.
 */
export function clientFor(s: Pick<SavedSession, 'api' | 'ca' | 'domain'>, token?: () => string | undefined): ApiClient {
  const host = s.api.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  const byIp = isIP(host) !== 0;
  return new ApiClient({ address: s.api, ca: s.ca, ...(byIp ? { serverName: `api.${s.domain}` } : {}), ...(token ? { token } : {}) });
}

export function connect(io: Io, domainFlag: string | undefined): Connection {
  const domain = resolveDomain(io, domainFlag);
  const saved = loadSession(io, domain);
  if (!saved) throw new PosternError('ERR_NOT_LOGGED_IN', `not logged in to ${domain}: run \`postern login --domain ${domain} --auth-token <token>\``);
  let session = saved;
  const client = clientFor(session, () => session.accessToken);
  const refresh = async () => {
    const t = await client.refresh(session.refreshToken);
    session = {
      ...session,
      accessToken: t.accessToken,
      refreshToken: t.refreshToken,
      accessTokenExpiresAt: new Date(Date.now() + t.expiresIn * 1000).toISOString(),
    };
    saveSession(io, session);
  };
  return {
    client,
    get session() {
      return session;
    },
    async call<T>(fn: (c: ApiClient) => Promise<T>): Promise<T> {
      if (Date.parse(session.accessTokenExpiresAt) <= Date.now() + 5000) {
        await refresh().catch((err: unknown) => {
          throw isPosternError(err) && (err.code === 'ERR_TOKEN_INVALID' || err.code === 'ERR_TOKEN_EXPIRED')
            ? new PosternError('ERR_NOT_LOGGED_IN', `the session for ${domain} has ended (${err.message}); log in again`)
            : err;
        });
      }
      try {
        return await fn(client);
      } catch (err) {
        if (!isPosternError(err, 'ERR_TOKEN_EXPIRED')) throw err;
        await refresh();
        return fn(client);
      }
    },
    close: () => client.close(),
  };
}
