/**
 * Firmware policies: what a node must have booted to get an identity.
 * Schema and loading of `keel.dev/v1` FirmwarePolicy documents, evaluation of
 * verified evidence (quoted PCRs + event log) into node selectors, and a
 * generator that makes a policy from a machine's own evidence.
 */
export { PolicyError, type PolicyIssue } from './errors.js';
export {
  API_VERSION,
  KIND,
  DIGEST_QUIRKS,
  POLICY_BANKS,
  RESERVED_SELECTOR_PREFIXES,
  EK_SELECTOR_PREFIXES,
  MAX_COMMAND_LINE,
  type FirmwarePolicy,
  type EventLogRules,
  type PolicyBank,
  type SecureBootRule,
  type BootApplicationOrder,
  type DigestQuirk,
  type KernelCommandLineRule,
} from './schema.js';
export { loadPolicy, loadPolicies, parsePolicy, validate as validatePolicy, MAX_POLICY_BYTES, type PolicySource } from './load.js';
export {
  evaluatePolicy,
  evaluatePolicies,
  requiredPcrs,
  policySelector,
  type PolicyEvidence,
  type PolicyResult,
  type PolicyViolation,
  type PolicySetResult,
} from './evaluate.js';
export {
  policyFromEvidence,
  createPolicyFromMachine,
  evidenceComments,
  type PolicyInclude,
  type PolicyFromEvidenceInput,
  type MachineEvidence,
} from './generate.js';
export { policyToYaml, policyToDocument, type YamlOptions } from './yaml.js';
export { compileLinePattern, LinePatternError, MAX_PATTERN_LENGTH, type LinePattern } from './line-pattern.js';
