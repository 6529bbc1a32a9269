import { PosternError } from '@postern/apis';

type Requirement =
  | { key: string; op: 'exists' | 'notexists' }
  | { key: string; op: 'in' | 'notin'; values: string[] };

/**
 * Parses a Kubernetes-style label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) into a
 * predicate over a label map. An empty selector matches everything.
 */
export function parseLabelSelector(selector: string | undefined): (labels: Record<string, string> | undefined) => boolean {
  const reqs: Requirement[] = [];
  const text = (selector ?? '').trim();
  const bad = (why: string) => new PosternError('ERR_USAGE', `invalid label selector "${text}": ${why}`);
  // Split on commas that are not inside parentheses.
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of text) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur.trim() || parts.length) parts.push(cur);
  for (const raw of parts) {
    const part = raw.trim();
    if (!part) throw bad('empty requirement');
    let m: RegExpMatchArray | null;
    if ((m = part.match(/^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/))) {
      reqs.push({ key: m[1]!, op: m[2] as 'in' | 'notin', values: m[3]!.split(',').map((v) => v.trim()).filter(Boolean) });
    } else if ((m = part.match(/^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$/))) {
      reqs.push({ key: m[1]!, op: m[2] === '!=' ? 'notin' : 'in', values: [m[3]!] });
    } else if ((m = part.match(/^!\s*([\w./-]+)$/))) {
      reqs.push({ key: m[1]!, op: 'notexists' });
    } else if ((m = part.match(/^([\w./-]+)$/))) {
      reqs.push({ key: m[1]!, op: 'exists' });
    } else {
      throw bad(`cannot read "${part}"`);
    }
  }
  return (labels) => reqs.every((r) => {
    const v = labels?.[r.key];
    switch (r.op) {
      case 'exists': return v !== undefined;
      case 'notexists': return v === undefined;
      case 'in': return v !== undefined && r.values.includes(v);
      case 'notin': return v === undefined || !r.values.includes(v);
    }
  });
}
