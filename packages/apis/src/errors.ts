/**
 * Every error code Postern reports, in one registry. A code is a stable contract: tests and
 * clients match on it, never on message text, and a code is never reused for another meaning.
 * `docs/errors.md` lists every code; a test keeps the two in step.
 */
export const errorCodes = {
  // Decoding and validation of resource documents.
  ERR_SYNTAX: 'The YAML or JSON text cannot be parsed.',
  ERR_NOT_AN_OBJECT: 'A document is not a mapping (object).',
  ERR_UNKNOWN_KIND: 'The `kind` is not one Postern knows.',
  ERR_UNKNOWN_FIELD: 'A field is not part of the schema (often a typo; the error suggests the closest field).',
  ERR_INVALID_TYPE: 'A field has the wrong type (a string where a number is expected, and so on).',
  ERR_INVALID_VALUE: 'A field has a value outside what it allows (an enum, a range, a format).',
  ERR_REQUIRED: 'A required field is missing.',
  ERR_ONE_OF: 'Exactly one of a group of fields must be set.',
  ERR_INVALID_NAME: 'A resource name breaks the naming rules (DNS labels, `svc.ns` for Services).',
  ERR_DUPLICATE_RESOURCE: 'The same kind and name appears twice in one apply.',
  ERR_MISSING_REFERENCE: 'A resource refers to a Secret, Policy, Namespace, User or Group that does not exist.',
  ERR_INVALID_CEL: 'A CEL expression does not compile.',
  ERR_IMMUTABLE_FIELD: 'A field that cannot change after creation was changed.',
  ERR_READ_ONLY_KIND: 'The kind is managed by Postern itself and cannot be written through this call.',
  // Store.
  ERR_NOT_FOUND: 'The resource does not exist.',
  ERR_ALREADY_EXISTS: 'A resource with that kind and name already exists.',
  ERR_CONFLICT: 'The resourceVersion given is stale: someone else changed the resource first.',
  ERR_WATCH_EXPIRED: 'The version a watch asked to resume from has been compacted away; list again.',
  ERR_STORE_UNAVAILABLE: 'The database cannot be reached right now; the call can be retried.',
  ERR_IN_USE: 'The resource is still referred to by others and cannot be deleted.',
  // Authentication and authorization.
  ERR_UNAUTHENTICATED: 'The call carries no valid credentials.',
  ERR_TOKEN_INVALID: 'A token is malformed, forged, revoked or of the wrong type.',
  ERR_TOKEN_EXPIRED: 'A token is past its lifetime.',
  ERR_CREDENTIAL_EXHAUSTED: 'A credential was used its maximum number of times or is disabled.',
  ERR_PERMISSION_DENIED: 'Policy denies the call.',
  // Client side.
  ERR_NOT_LOGGED_IN: 'The CLI has no session for this domain.',
  ERR_TLS_PIN_MISMATCH: 'The cluster presented a CA other than the one pinned at login.',
  ERR_USAGE: 'A command was called with wrong or missing arguments.',
  ERR_NOT_IMPLEMENTED: 'The feature is recognised but not built yet.',
  ERR_INTERNAL: 'An unexpected failure; the message carries a request ID to find it in the logs.',
} as const;

export type ErrorCode = keyof typeof errorCodes;

/** Where in a source file (and in the resource) a problem sits. */
export interface Location {
  file?: string;
  /** Index of the document in a multi-document stream, from 0. */
  document?: number;
  /** 1-based line and column, when the source text is known. */
  line?: number;
  column?: number;
  /** Field path inside the resource, e.g. `spec.config.upstream.url`. */
  path?: string;
}

export interface Issue extends Location {
  code: ErrorCode;
  message: string;
}

/** An error with a stable code. `issues` holds every problem when there were several. */
export class PosternError extends Error {
  readonly code: ErrorCode;
  readonly issues: Issue[];

  constructor(code: ErrorCode, message: string, issues: Issue[] = []) {
    super(message);
    this.name = 'PosternError';
    this.code = code;
    this.issues = issues;
  }

  /** Wraps a list of issues; the first issue's code becomes the error's code. */
  static fromIssues(issues: Issue[], summary?: string): PosternError {
    const first = issues[0];
    if (!first) throw new Error('fromIssues needs at least one issue');
    const text = summary ?? issues.map(formatIssue).join('\n');
    return new PosternError(first.code, text, issues);
  }
}

export function isPosternError(err: unknown, code?: ErrorCode): err is PosternError {
  return err instanceof PosternError && (code === undefined || err.code === code);
}

/** `file:line:col: path: message [CODE]`, leaving out what is unknown. */
export function formatIssue(issue: Issue): string {
  let where = '';
  if (issue.file) where += issue.file;
  if (issue.line !== undefined) where += `${where ? ':' : 'line '}${issue.line}${issue.column !== undefined ? `:${issue.column}` : ''}`;
  else if (issue.document !== undefined) where += `${where ? ' ' : ''}document ${issue.document + 1}`;
  const path = issue.path ? `${issue.path}: ` : '';
  return `${where ? `${where}: ` : ''}${path}${issue.message} [${issue.code}]`;
}
