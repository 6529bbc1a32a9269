import type { AnyResource } from './kinds/index.js';
import { formatPath, type PathSegment, type ValidationIssue } from './validate.js';

/**
 * Features the schema accepts (they are in REFERENCE.md) but this build cannot run yet: refused
 * when written, loudly, with the field — never accepted and ignored. `posternctl apply` checks
 * them before sending, the API server again.
 */
export function unsupportedFeatures(r: AnyResource): ValidationIssue[] {
  if (r.kind !== 'Service') return [];
  type Config = { upstream?: { container?: unknown; user?: string; loadbalance?: { endpoints?: { user?: string }[] } } } | undefined;
  const spec = (r.spec ?? {}) as { isTLS?: boolean; config?: Config; dynamicConfig?: { configs?: Config[] } };
  const configs: [PathSegment[], Config][] = [[['spec', 'config'], spec.config]];
  (spec.dynamicConfig?.configs ?? []).forEach((c, i) => configs.push([['spec', 'dynamicConfig', 'configs', i], c]));
  const issues: ValidationIssue[] = [];
  const issue = (segments: PathSegment[], message: string) => issues.push({ code: 'ERR_NOT_IMPLEMENTED', message, path: formatPath(segments), segments });
  if (spec.isTLS) issue(['spec', 'isTLS'], 'Services served over TLS at their private address are not implemented yet (the tunnel is already encrypted); leave isTLS false, or set isPublic for HTTPS on the public listener');
  for (const [base, config] of configs) {
    const up = config?.upstream;
    if (up?.container) issue([...base, 'upstream', 'container'], 'container upstreams run on Kubernetes, which this cluster does not manage; run the container yourself and point upstream.url at it');
    if (up?.user) issue([...base, 'upstream', 'user'], 'upstreams served by a connected client are not implemented yet; point upstream.url at the service');
    (up?.loadbalance?.endpoints ?? []).forEach((e, i) => {
      if (e.user) issue([...base, 'upstream', 'loadbalance', 'endpoints', i, 'user'], 'upstreams served by a connected client are not implemented yet; give the endpoint a url only');
    });
  }
  return issues;
}

