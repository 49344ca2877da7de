/** Server side of TPM node attestation and agent SVID renewal. */
export { Attestor, LIMITS as ATTESTATION_LIMITS, type AttestorOptions } from './attestor.js';
export { AttestationError, ATTESTATION_REASONS, isAttestationReason, type AttestationReason } from './errors.js';
export { firmwarePolicies } from './policy.js';
export type {
  AgentSvidIssuer,
  AttestParams,
  AttestationResult,
  Challenge,
  ChallengeResponse,
  EkAdmission,
  MeasurementPolicy,
  PcrBank,
  PcrSelectionMessage,
  PcrValuesMessage,
  PendingAttestation,
  PendingRenewal,
  PolicyVerdict,
} from './types.js';
