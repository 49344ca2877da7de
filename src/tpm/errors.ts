/**
 * Typed errors of the TPM structure and verification code. Each names what was
 * wrong; none carries key material or secrets.
 */

/** Bytes that are not a well-formed TPM structure. */
export class TpmParseError extends Error {
  override readonly name = 'TpmParseError';
  constructor(
    /** The structure (and field) being read, e.g. `TPMS_ATTEST.extraData`. */
    readonly structure: string,
    /** Byte offset into the input where the problem was found. */
    readonly offset: number,
    detail: string,
  ) {
    super(`${structure} at offset ${offset}: ${detail}`);
  }
}

/** A value that cannot be marshalled (too long for its size field, out of range…). */
export class TpmMarshalError extends Error {
  override readonly name = 'TpmMarshalError';
  constructor(
    readonly structure: string,
    detail: string,
  ) {
    super(`${structure}: ${detail}`);
  }
}

/** A well-formed structure that uses an algorithm, curve or type keel does not support. */
export class TpmUnsupportedError extends Error {
  override readonly name = 'TpmUnsupportedError';
  constructor(
    /** What is unsupported, e.g. `hash algorithm 0x0012`. */
    readonly what: string,
  ) {
    super(`unsupported ${what}`);
  }
}

export type QuoteFailureReason =
  | 'malformed' // attest or signature bytes do not parse
  | 'magic' // not TPM_GENERATED_VALUE: not made by a TPM
  | 'type' // not a TPM_ST_ATTEST_QUOTE
  | 'scheme' // signature algorithm/hash is not the AK's scheme
  | 'signature' // signature does not verify with the AK
  | 'nonce' // extraData is not the nonce we issued
  | 'selection' // quoted PCR selection is not the one asked for
  | 'pcr-values' // PCR values given do not fit the selection
  | 'pcr-digest' // pcrDigest is not H(PCR values)
  | 'clock-rollback'; // clock/resetCount/restartCount went backwards

export class QuoteVerificationError extends Error {
  override readonly name = 'QuoteVerificationError';
  constructor(
    readonly reason: QuoteFailureReason,
    detail: string,
  ) {
    super(`quote verification failed (${reason}): ${detail}`);
  }
}

export type AkFailureReason =
  | 'malformed'
  | 'attribute-missing'
  | 'attribute-forbidden'
  | 'key-type'
  | 'key-size'
  | 'curve'
  | 'scheme'
  | 'name-alg'
  | 'symmetric'
  | 'public-key';

/** An AK public area that does not describe an attestation key. */
export class AkPublicError extends Error {
  override readonly name = 'AkPublicError';
  constructor(
    readonly reason: AkFailureReason,
    detail: string,
    /** The TPMA_OBJECT attribute missing or forbidden, when that is the reason. */
    readonly attribute?: string,
  ) {
    super(`AK public area refused (${reason}): ${detail}`);
  }
}

export type EkCertificateFailureReason =
  | 'malformed'
  | 'untrusted' // no path to a configured root
  | 'signature'
  | 'expired'
  | 'not-yet-valid'
  | 'issuer-not-ca'
  | 'path-too-long';

export class EkCertificateError extends Error {
  override readonly name = 'EkCertificateError';
  constructor(
    readonly reason: EkCertificateFailureReason,
    detail: string,
  ) {
    super(`EK certificate refused (${reason}): ${detail}`);
  }
}

/** Inputs to MakeCredential that the TPM would refuse at ActivateCredential. */
export class CredentialError extends Error {
  override readonly name = 'CredentialError';
  constructor(detail: string) {
    super(`MakeCredential: ${detail}`);
  }
}

/** A public area whose key cannot be used (bad modulus, point not on the curve…). */
export class TpmKeyError extends Error {
  override readonly name = 'TpmKeyError';
  constructor(detail: string) {
    super(`public area holds no usable key: ${detail}`);
  }
}

export type AgentKeyFailureReason = 'malformed' | 'attribute-missing' | 'attribute-forbidden' | 'key-type' | 'curve' | 'scheme' | 'name-alg' | 'public-key';

/** A public area that does not describe an agent key (an unrestricted, non-exportable ECDSA P-256 signing key). */
export class AgentKeyPublicError extends Error {
  override readonly name = 'AgentKeyPublicError';
  constructor(
    readonly reason: AgentKeyFailureReason,
    detail: string,
  ) {
    super(`not an agent key (${reason}): ${detail}`);
  }
}

export type CertifyFailureReason = 'malformed' | 'scheme' | 'signature' | 'magic' | 'type' | 'nonce' | 'name';

export class CertifyVerificationError extends Error {
  override readonly name = 'CertifyVerificationError';
  constructor(
    readonly reason: CertifyFailureReason,
    detail: string,
  ) {
    super(`key certification failed (${reason}): ${detail}`);
  }
}
