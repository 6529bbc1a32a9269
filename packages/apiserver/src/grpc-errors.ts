import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { PosternError, errorCodes, type ErrorCode, type Issue } from '@postern/apis';

const grpcStatusOf: Partial<Record<ErrorCode, status>> = {
  ERR_NOT_FOUND: status.NOT_FOUND,
  ERR_ALREADY_EXISTS: status.ALREADY_EXISTS,
  ERR_CONFLICT: status.ABORTED,
  ERR_WATCH_EXPIRED: status.OUT_OF_RANGE,
  ERR_STORE_UNAVAILABLE: status.UNAVAILABLE,
  ERR_UNAUTHENTICATED: status.UNAUTHENTICATED,
  ERR_TOKEN_INVALID: status.UNAUTHENTICATED,
  ERR_TOKEN_EXPIRED: status.UNAUTHENTICATED,
  ERR_CREDENTIAL_EXHAUSTED: status.PERMISSION_DENIED,
  ERR_PERMISSION_DENIED: status.PERMISSION_DENIED,
  ERR_IN_USE: status.FAILED_PRECONDITION,
  ERR_NOT_IMPLEMENTED: status.UNIMPLEMENTED,
  ERR_INTERNAL: status.INTERNAL,
};

/** The gRPC status a Postern error travels as; anything about the input is INVALID_ARGUMENT. */
export function grpcStatusFor(code: ErrorCode): status {
  return grpcStatusOf[code] ?? status.INVALID_ARGUMENT;
}

/**
 * A PosternError as a gRPC error: status code, the message, and in trailers the stable code
 * (`postern-code`) and every issue (`postern-issues-bin`, JSON). Unknown errors become INTERNAL
 * with only the request ID shown: the cause goes to the log, not to the caller.
 */
export function toServiceError(err: unknown, requestId: string): Partial<ServiceError> {
  const metadata = new Metadata();
  metadata.set('postern-request-id', requestId);
  if (err instanceof PosternError) {
    metadata.set('postern-code', err.code);
    if (err.issues.length) metadata.set('postern-issues-bin', Buffer.from(JSON.stringify(err.issues)));
    return { code: grpcStatusFor(err.code), details: err.message, metadata };
  }
  metadata.set('postern-code', 'ERR_INTERNAL');
  return { code: status.INTERNAL, details: `internal error (request ${requestId}); the server log has the cause`, metadata };
}

/** Client side: a gRPC error back into a PosternError with its code and issues. */
export function fromServiceError(err: unknown): PosternError {
  if (err instanceof PosternError) return err;
  const e = err as Partial<ServiceError>;
  const code = e.metadata?.get('postern-code')[0]?.toString();
  const issuesBuf = e.metadata?.get('postern-issues-bin')[0];
  let issues: Issue[] = [];
  if (issuesBuf) {
    try {
      issues = JSON.parse(Buffer.from(issuesBuf as Buffer).toString('utf8')) as Issue[];
    } catch {
      issues = [];
    }
  }
  if (code && code in errorCodes) return new PosternError(code as ErrorCode, e.details ?? e.message ?? code, issues);
  if (e.code === status.UNAVAILABLE) {
    return new PosternError('ERR_STORE_UNAVAILABLE', `the cluster API is unreachable: ${e.details ?? e.message}`);
  }
  if (e.code === status.UNAUTHENTICATED) return new PosternError('ERR_UNAUTHENTICATED', e.details ?? 'unauthenticated');
  return new PosternError('ERR_INTERNAL', e.details ?? e.message ?? String(err));
}
