/**
 * Request-target normalisation, done before policy evaluation; the normalised path is what the
 * upstream receives, so a policy on `/admin` cannot be dodged with `/public/../admin`,
 * `/%2e%2e/admin`, `/public%2f..%2fadmin`, `//admin` or `/public/..;/admin`.
 */
export type TargetResult = { ok: true; path: string; query: string } | { ok: false; reason: string };

const unreserved = /[A-Za-z0-9\-._~]/;
/** What the slow path below would change or refuse; a path with none of it is already normal. */
const needsWork = /[^\x21-\x7e]|[%\\]|\/\/|\/\.\.?(?:[/;]|$)/;
/**
 * A dot segment with path parameters (`..;`, `..;x=1`, `.;`). Tomcat, Jetty and the Java
 * servers behind Spring take the parameters off and then read `..`: `/public/..;/admin` is
 * `/admin` to them and `/public/...` to a policy. Refused, as Spring Security's firewall does.
 */
const dotWithParams = /(?:^|\/)\.\.?;/;

/** RFC 3986 §5.2.4, on a path whose `%2e` and `%2f` are already decoded. */
function removeDotSegments(path: string): string {
  const out: string[] = [];
  const segments = path.split('/');
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '.') {
      if (last) out.push('');
    } else if (seg === '..') {
      if (out.length > 1) out.pop();
      if (last) out.push('');
    } else out.push(seg);
  }
  return out.join('/') || '/';
}

/**
 * Normalises an HTTP request target: percent-decodes unreserved characters and `%2F`, upper-cases
 * the hex of what stays encoded, merges repeated slashes and removes dot segments. Rejects
 * targets that are not origin- or absolute-form, control characters, `%00`, bad escapes,
 * backslashes and fragments.
 */
export function normalizeTarget(target: string): TargetResult {
  let t = target;
  if (/^https?:\/\//i.test(t)) {
    const slash = t.indexOf('/', t.indexOf('//') + 2);
    t = slash < 0 ? '/' : t.slice(slash);
  }
  if (!t.startsWith('/')) return { ok: false, reason: 'request target must start with /' };
  if (t.includes('#')) return { ok: false, reason: 'fragment in request target' };
  const q = t.indexOf('?');
  const rawPath = q < 0 ? t : t.slice(0, q);
  const query = q < 0 ? '' : t.slice(q + 1);
  if (!needsWork.test(rawPath)) return { ok: true, path: rawPath, query };
  let path = '';
  for (let i = 0; i < rawPath.length; i++) {
    const c = rawPath[i]!;
    const code = c.charCodeAt(0);
    if (code < 0x21 || code === 0x7f) return { ok: false, reason: 'control character or space in path' };
    // HTTP/1.1's parser refuses these already; an HTTP/2 :path reaches here as it came.
    if (code > 0x7f) return { ok: false, reason: 'character outside ASCII in path (percent-encode it)' };
    if (c === '\\') return { ok: false, reason: 'backslash in path' };
    if (c !== '%') {
      path += c;
      continue;
    }
    const hex = rawPath.slice(i + 1, i + 3);
    if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return { ok: false, reason: 'bad percent-escape in path' };
    const ch = String.fromCharCode(parseInt(hex, 16));
    if (ch === '\0') return { ok: false, reason: 'encoded NUL in path' };
    if (ch === '\\') return { ok: false, reason: 'encoded backslash in path' };
    path += ch === '/' || unreserved.test(ch) ? ch : `%${hex.toUpperCase()}`;
    i += 2;
  }
  path = path.replace(/\/{2,}/g, '/');
  if (dotWithParams.test(path)) return { ok: false, reason: "dot segment with path parameters ('..;') in path" };
  return { ok: true, path: removeDotSegments(path), query };
}
