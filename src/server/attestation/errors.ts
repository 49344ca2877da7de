/**
 * Why an attestation or a renewal was refused. The reason is a short code the
 * audit line, the gRPC status and the agent all carry; the detail says what
 * was wrong in words, and never holds a secret.
 */
export const ATTESTATION_REASONS = [
  'malformed', // a message or TPM structure that does not parse
  'too-large', // a field over its size limit
  'csr-invalid', // the CSR does not parse or its self-signature fails
  'ek-untrusted', // the EK certificate does not chain to a manufacturer CA (and the EK is not allow-listed)
  'ek-not-allowed', // no EK certificate admitted it and its hash is not on the allow-list
  'ek-cert-mismatch', // the EK certificate certifies another key than the EK public sent
  'ak-invalid', // the AK public area is not an attestation key
  'agent-key-invalid', // the agent key is not an unrestricted, non-exportable TPM signing key, or the CSR is for another key
  'agent-key-certify', // the AK's certification of the agent key is missing or does not verify (the key is not in this TPM)
  'banned', // the node (by EK hash) is banned
  'secret-mismatch', // the activated credential is not the secret: the AK is not in the EK's TPM
  'nonce-unknown', // the challenge's nonce was never issued (for this exchange)
  'nonce-used', // the challenge was answered already
  'nonce-expired', // the answer came after the nonce's TTL
  'quote-signature', // the quote does not verify with the AK (or is not a TPM quote)
  'quote-nonce', // the quote's extraData is not the nonce
  'quote-selection', // the quoted PCR selection is not the one asked for
  'pcr-digest', // the PCR values sent are not the ones the quote digests
  'eventlog-replay', // the event log does not replay to the quoted PCRs
  'policy', // no firmware policy holds for these measurements
  'clock-rollback', // the TPM clock went backwards against the node's last quote
  'unknown-node', // renewal: no attested node with this agent ID
  'not-active', // renewal: the node was evicted (it must attest again) or renewed meanwhile
  'ak-changed', // renewal: the AK is not the one the node attested with
  'unauthenticated', // renewal / mTLS call without a valid agent SVID of this trust domain
  'superseded', // the agent SVID presented is not the one the node holds now (re-attested, renewed, evicted or banned since)
  'too-many-challenges', // too many unanswered challenges from this peer or in total
  'eventlog-required', // continuous attestation: the server holds no copy of the log the agent says is unchanged
  'internal', // the server could not finish (CA or store failure); nothing was recorded
] as const;

export type AttestationReason = (typeof ATTESTATION_REASONS)[number];


export class AttestationError extends Error {
  override readonly name = 'AttestationError';
  constructor(
    readonly reason: AttestationReason,
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`attestation refused (${reason}): ${detail}`, options);
  }
}
