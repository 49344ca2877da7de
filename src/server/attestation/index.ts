/** Server side of TPM node attestation and agent SVID renewal. */
export { Attestor, type AttestorOptions } from './attestor.js';
export { AttestationError, ATTESTATION_REASONS, type AttestationReason } from './errors.js';
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
