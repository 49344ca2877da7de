/**
 * The messages of the attestation exchange as the attestor sees them (the
 * gRPC layer maps the proto onto these), and what it needs injected.
 */
import type { X509Certificate } from 'node:crypto';
import type { EventLog, HashAlg } from '../../tpm/eventlog/index.js';
import type { TpmtPublic } from '../../tpm/index.js';
import type { TpmsClockInfo } from '../../tpm/index.js';
import type { ParsedCsr, IssuedX509Svid, X509SvidRequest } from '../ca/index.js';
import type { TrustBundle } from '../../spiffe/index.js';
import type { SpiffeId } from '../../spiffe/id.js';

export type PcrBank = 'sha1' | 'sha256' | 'sha384';

/** Step 1, agent → server. */
export interface AttestParams {
  /** TPMT_PUBLIC of the EK. */
  readonly ekPublic: Uint8Array;
  /** The EK certificate NV contents (DER, maybe framed or padded); empty or absent when the TPM has none. */
  readonly ekCertificate?: Uint8Array;
  /** TPMT_PUBLIC of the AK. */
  readonly akPublic: Uint8Array;
  /** PKCS#10 DER for the agent SVID, for the agent key and signed by it. */
  readonly csr: Uint8Array;
  /** TPMT_PUBLIC of the agent key: made in the TPM, never exportable; the SVID certifies it. */
  readonly agentKeyPublic: Uint8Array;
}

export interface PcrSelectionMessage {
  readonly bank: PcrBank;
  readonly pcrs: readonly number[];
}

/** Step 2, server → agent. */
export interface Challenge {
  /** TPM2B_ID_OBJECT contents; empty on renewal. */
  readonly credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET contents; empty on renewal. */
  readonly encryptedSecret: Buffer;
  readonly nonce: Buffer;
  readonly pcrSelection: readonly PcrSelectionMessage[];
}

export interface PcrValuesMessage {
  readonly bank: string;
  readonly values: ReadonlyMap<number, Uint8Array>;
}

/** Step 3, agent → server. */
export interface ChallengeResponse {
  /** The activated credential; empty on renewal. */
  readonly secret: Uint8Array;
  /** TPMS_ATTEST bytes. */
  readonly quote: Uint8Array;
  /** TPMT_SIGNATURE bytes. */
  readonly quoteSignature: Uint8Array;
  readonly pcrValues: readonly PcrValuesMessage[];
  /** TCG event log; empty or absent when the node has none. */
  readonly eventLog?: Uint8Array;
  /** TPMS_ATTEST of TPM2_Certify(agent key) by the AK over the nonce. */
  readonly agentKeyCertify?: Uint8Array;
  readonly agentKeyCertifySignature?: Uint8Array;
  /** Continuous attestation: SHA-256 of the event log when it is unchanged since the last one sent (eventLog then empty). */
  readonly eventLogSha256?: Uint8Array;
}

/** Step 4, server → agent. */
export interface AttestationResult {
  readonly spiffeId: string;
  /** DER, leaf first. */
  readonly svidChain: readonly Buffer[];
  /** The trust bundle's X.509 authorities, concatenated DER. */
  readonly bundle: Buffer;
  readonly expiresAt: Date;
  readonly selectors: readonly string[];
  /** Lowercase hex serial of the agent SVID. */
  readonly serial: string;
}

/** What the firmware policies say about one verified set of measurements. */
export type PolicyVerdict =
  | { readonly ok: true; readonly selectors: readonly string[] }
  | { readonly ok: false; readonly detail: string };

/** The firmware policies, already loaded. */
export interface MeasurementPolicy {
  evaluate(measurements: { readonly bank: HashAlg; readonly pcrs: ReadonlyMap<number, Buffer>; readonly eventLog?: EventLog }): PolicyVerdict;
}

/** The part of the CA the attestor uses (CertificateAuthority has it). */
export interface AgentSvidIssuer {
  issueX509Svid(request: X509SvidRequest): Promise<IssuedX509Svid>;
  bundle(): TrustBundle;
}

/** How an EK is admitted: by certificate chain, by hash, or both. */
export interface EkAdmission {
  /** Manufacturer CA certificates: self-signed ones are anchors, the others intermediates. */
  readonly manufacturerCas: readonly X509Certificate[];
  /** Lowercase hex SHA-256 of EK public keys (PKIX DER). */
  readonly allowList: ReadonlySet<string>;
}

/**
 * What the server keeps between the challenge and its answer. It stays on the
 * server (the gRPC stream holds it); the agent never sees it.
 */
export interface PendingAttestation {
  readonly kind: 'attest';
  readonly nonce: Buffer;
  readonly nonceContext: string;
  readonly secret: Buffer;
  readonly agentId: SpiffeId;
  readonly ekHash: string;
  readonly akPublic: TpmtPublic;
  readonly akName: Buffer;
  readonly csr: ParsedCsr;
  readonly agentKeyPublic: TpmtPublic;
  /** Selectors the EK admission earned (ek-hash, ek-ca). */
  readonly admissionSelectors: readonly string[];
  readonly peer: string | undefined;
}

export interface PendingRenewal {
  readonly kind: 'renew';
  readonly nonce: Buffer;
  readonly nonceContext: string;
  readonly agentId: SpiffeId;
  readonly ekHash: string;
  readonly akPublic: TpmtPublic;
  /** Serial of the SVID the agent authenticated with: the renewal replaces exactly that one. */
  readonly presentedSerial: string;
  readonly agentKeyPublic: TpmtPublic;
  readonly previousClock: TpmsClockInfo;
  /** Node selectors that do not come from measurements (ek-hash, ek-ca), kept across renewals. */
  readonly admissionSelectors: readonly string[];
}

/** A continuous attestation of an active node, between its challenge and the answer. */
export interface PendingCheck {
  readonly kind: 'check';
  readonly nonce: Buffer;
  readonly nonceContext: string;
  readonly agentId: SpiffeId;
  readonly akPublic: TpmtPublic;
  readonly presentedSerial: string;
  readonly previousClock: TpmsClockInfo;
}
