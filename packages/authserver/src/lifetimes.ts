import { durationMs, type AnyResource, type SessionDurations } from '@postern/apis';

const hour = 3_600_000;
const day = 24 * hour;

/** REFERENCE.md's defaults, by user type. */
const defaults = {
  HUMAN: { session: 21 * hour, accessToken: 4 * hour, refreshToken: 21 * hour },
  WORKLOAD: { session: 90 * day, accessToken: 4 * hour, refreshToken: 14 * day },
} as const;

export interface Lifetimes {
  sessionMs: number;
  accessTokenMs: number;
  refreshTokenMs: number;
}

/** Lifetimes for a new session: the User's own settings, else ClusterConfig's for its type, else the defaults. */
export function lifetimesFor(user: AnyResource, clusterConfig: AnyResource | undefined, sessionType: 'CLIENT' | 'CLIENTLESS'): Lifetimes {
  const type = (user.spec as { type?: 'HUMAN' | 'WORKLOAD' }).type === 'WORKLOAD' ? 'WORKLOAD' : 'HUMAN';
  const own = (user.spec as { session?: SessionDurations }).session;
  const clusterSession = (clusterConfig?.spec as { session?: { human?: SessionDurations; workload?: SessionDurations } } | undefined)?.session;
  const cluster = type === 'WORKLOAD' ? clusterSession?.workload : clusterSession?.human;
  const pick = (f: (s: SessionDurations | undefined) => number | undefined, fallback: number) => f(own) ?? f(cluster) ?? fallback;
  const sessionField = sessionType === 'CLIENT' ? 'clientDuration' : 'clientlessDuration';
  return {
    sessionMs: pick((s) => durationMs(s?.[sessionField]), defaults[type].session),
    accessTokenMs: pick((s) => durationMs(s?.accessTokenDuration), defaults[type].accessToken),
    refreshTokenMs: pick((s) => durationMs(s?.refreshTokenDuration), defaults[type].refreshToken),
  };
}
