import { PosternError, type AnyResource } from '@postern/apis';
import type { Identity } from '@postern/authserver';
import { decide, describeDecision, gatherPolicies, preCheck, type Decision } from '@postern/policy';
import type { ResourceCache } from '@postern/store';

/** What a gRPC call is about, as policies see it in `ctx.request.grpc`. */
export interface GrpcRequestInfo {
  service: string;
  method: string;
  resource?: { kind: string; name: string };
}

/** The groups of a user that exist. */
export function groupsOf(cache: ResourceCache, user: AnyResource): AnyResource[] {
  return ((user.spec as { groups?: string[] }).groups ?? []).flatMap((g) => cache.get('Group', g) ?? []);
}

/** The CEL `ctx` for a request by `identity` (whose groups the caller has looked up), with `request` as given. */
export function requestContext(identity: Identity, groups: AnyResource[], request: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return { user: identity.user, groups, session: identity.session, request, ...extra };
}

/**
 * Authorizes API calls with the same decision core the proxy uses. Policies come from the
 * ClusterConfig, the User, its Groups and the Session (Credential policies are copied onto it).
 * There is no superuser: `root` can do what its policy lets it do.
 */
export class ApiAuthorizer {
  constructor(private readonly cache: ResourceCache, private readonly now: () => Date) {}

  decide(identity: Identity, info: GrpcRequestInfo): Decision {
    const check = preCheck({ session: identity.session, user: identity.user, now: this.now(), accessTokenExpiresAt: identity.accessTokenExpiresAt });
    const groups = groupsOf(this.cache, identity.user);
    const { policies } = gatherPolicies(
      { clusterConfig: this.cache.get('ClusterConfig', 'default'), user: identity.user, groups, session: identity.session },
      (name) => this.cache.get('Policy', name),
    );
    const ctx = requestContext(identity, groups, { grpc: info });
    return decide(policies, ctx, check);
  }

  /** Throws ERR_PERMISSION_DENIED (naming the call, never the policy) unless allowed. */
  authorize(identity: Identity, info: GrpcRequestInfo, onDecision?: (d: Decision) => void): void {
    const d = this.decide(identity, info);
    onDecision?.(d);
    if (d.effect !== 'ALLOW') {
      const what = info.resource ? `${info.method} ${info.resource.kind}${info.resource.name ? `/${info.resource.name}` : ''}` : info.method;
      const why = d.reason.type === 'PRE_CHECK' ? ` (${d.reason.detail})` : '';
      throw new PosternError('ERR_PERMISSION_DENIED', `permission denied: ${what}${why}`);
    }
  }
}

export { describeDecision };
