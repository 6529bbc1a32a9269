import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PosternError } from '@postern/apis';
import type { Io } from './io.js';

/** What `postern login` keeps per domain (0600): where the API is, which CA to trust, the tokens. */
export interface SavedSession {
  domain: string;
  api: string;
  /** PEM of the pinned cluster CA. */
  ca: string;
  caFingerprint: string;
  accessToken: string;
  refreshToken: string;
  /** ISO time the access token expires. */
  accessTokenExpiresAt: string;
  sessionName: string;
}

/** `$POSTERN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/postern`, else `~/.config/postern`. */
export function configDir(io: Io): string {
  return io.env.POSTERN_CONFIG_DIR ?? join(io.env.XDG_CONFIG_HOME ?? join(io.home, '.config'), 'postern');
}

function sessionsDir(io: Io): string {
  return join(configDir(io), 'sessions');
}

function fileFor(io: Io, domain: string): string {
  if (!/^[a-z0-9.-]+$/i.test(domain)) throw new PosternError('ERR_USAGE', `"${domain}" is not a domain name`);
  return join(sessionsDir(io), `${domain}.json`);
}

export function loadSession(io: Io, domain: string): SavedSession | undefined {
  const f = fileFor(io, domain);
  if (!existsSync(f)) return undefined;
  return JSON.parse(readFileSync(f, 'utf8')) as SavedSession;
}

/** Writes atomically with mode 0600 in a 0700 folder: tokens are as good as a password. */
export function saveSession(io: Io, s: SavedSession): void {
  const dir = sessionsDir(io);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(configDir(io), 0o700);
  chmodSync(dir, 0o700);
  const f = fileFor(io, s.domain);
  const tmp = `${f}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(s, null, 2), { mode: 0o600 });
  renameSync(tmp, f);
}

export function removeSession(io: Io, domain: string): boolean {
  const f = fileFor(io, domain);
  if (!existsSync(f)) return false;
  rmSync(f);
  return true;
}

/** Domains with a saved session. */
export function savedDomains(io: Io): string[] {
  const dir = sessionsDir(io);
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).sort();
}

/** `--domain`, else $POSTERN_DOMAIN, else the only domain logged in to. */
export function resolveDomain(io: Io, flag: string | undefined): string {
  const d = flag ?? io.env.POSTERN_DOMAIN;
  if (d) return d;
  const saved = savedDomains(io);
  if (saved.length === 1) return saved[0]!;
  throw new PosternError(
    'ERR_USAGE',
    saved.length === 0 ? 'no cluster domain: pass --domain (or set POSTERN_DOMAIN) and log in with `postern login`' : `logged in to several domains (${saved.join(', ')}): pass --domain`,
  );
}
