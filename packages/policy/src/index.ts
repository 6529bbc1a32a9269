/**
 * @postern/policy — the decision core shared by the API server and the proxy: CEL compiled once
 * and cached by content hash, Postern's extra CEL functions, policy gathering from attachments,
 * pre-checks, and the decision (priority, DENY first, first match, default deny) with its reason.
 * Pure: no I/O; imports only @postern/apis.
 */
export { compileCel, CelCompileError, ipInRange, isMissingField, type CompiledExpression } from './cel.js';
export {
  decide,
  describeDecision,
  evaluateCondition,
  orderRules,
  type Decision,
  type DecideOptions,
  type PolicySource,
  type Reason,
  type ReasonType,
  type RuleTrace,
} from './decision.js';
export { gatherPolicies, referencedPolicies, celIssues, type Attachments } from './gather.js';
export { preCheck, preCheckCodes, type PreCheckCode } from './prechecks.js';
export { httpRequest, type HttpRequestInput } from './context.js';
