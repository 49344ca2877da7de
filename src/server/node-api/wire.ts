/**
 * The Node API messages as proto-loader hands them over (snake_case, bytes as
 * Buffer, oneof name in `step`), and their mapping onto the attestor's types.
 * Anything the client left out arrives as a default (empty), never undefined.
 */
import * as grpc from '@grpc/grpc-js';
import type { AttestParams, AttestationResult, Challenge, ChallengeResponse, PcrValuesMessage } from '../attestation/types.js';
import { AttestationError, type AttestationReason } from '../attestation/errors.js';
import { formatSelector, type RegistrationEntry } from '../store/index.js';
import {
  REASON_METADATA_KEY,
  type WireAttestParams, type WireAttestRequest, type WireAttestResponse, type WireChallengeResponse, type WireEntry,
} from '../../proto/node-api.js';

export type {
  WireAttestParams, WirePcrValues, WireChallengeResponse, WireAttestRequest, WireAttestResponse, WireEntry,
  WireSyncEntriesResponse, WireSignX509SvidsRequest, WireX509SvidResult, WireSignJwtSvidRequest, WireSignWitSvidRequest,
} from '../../proto/node-api.js';
export { REASON_METADATA_KEY } from '../../proto/node-api.js';

/** The request's step, or a typed refusal when the message is not the step expected. */
export function expectStep<K extends 'params' | 'challenge_response'>(msg: WireAttestRequest | undefined, step: K): NonNullable<WireAttestRequest[K]> {
  if (!msg) throw new AttestationError('malformed', `the stream ended before ${step}`);
  const value = msg[step];
  if (msg.step !== step || !value) throw new AttestationError('malformed', `expected ${step}, got ${msg.step ?? 'an empty message'}`);
  return value as NonNullable<WireAttestRequest[K]>;
}

export function toAttestParams(p: WireAttestParams): AttestParams {
  return { ekPublic: p.ek_public, ekCertificate: p.ek_certificate, akPublic: p.ak_public, csr: p.csr, agentKeyPublic: p.agent_key_public };
}

const PCR_KEY = /^(?:0|[1-9][0-9]?)$/;

export function toChallengeResponse(r: WireChallengeResponse): ChallengeResponse {
  const pcrValues: PcrValuesMessage[] = (r.pcr_values ?? []).map((b) => {
    const values = new Map<number, Buffer>();
    for (const [k, v] of Object.entries(b.values ?? {})) {
      if (!PCR_KEY.test(k)) throw new AttestationError('malformed', `PCR index ${JSON.stringify(k.slice(0, 12))}`);
      values.set(Number(k), v);
    }
    return { bank: b.bank, values };
  });
  return {
    secret: r.secret,
    quote: r.quote,
    quoteSignature: r.quote_signature,
    pcrValues,
    eventLog: r.event_log,
    agentKeyCertify: r.agent_key_certify,
    agentKeyCertifySignature: r.agent_key_certify_signature,
    eventLogSha256: r.event_log_sha256,
  };
}

export function challengeToWire(c: Challenge): WireAttestResponse {
  return {
    challenge: {
      credential_blob: c.credentialBlob,
      encrypted_secret: c.encryptedSecret,
      nonce: c.nonce,
      pcr_selection: c.pcrSelection.map((s) => ({ bank: s.bank, pcrs: [...s.pcrs] })),
    },
  };
}

export function resultToWire(r: AttestationResult): WireAttestResponse {
  return {
    result: {
      spiffe_id: r.spiffeId,
      svid_chain: [...r.svidChain],
      bundle: r.bundle,
      expires_at: Math.floor(r.expiresAt.getTime() / 1000),
      selectors: [...r.selectors],
    },
  };
}

export function entryToWire(e: RegistrationEntry): WireEntry {
  return {
    id: e.id,
    spiffe_id: e.spiffeId.toString(),
    parent_id: e.parentId.toString(),
    selectors: e.selectors.map(formatSelector),
    x509_svid_ttl: e.x509SvidTtl ?? 0,
    jwt_svid_ttl: e.jwtSvidTtl ?? 0,
    dns_names: [...e.dnsNames],
    federates_with: e.federatesWith.map((td) => td.name),
    hint: e.hint ?? '',
    revision: e.revision,
  };
}


const CODE_OF: Partial<Record<AttestationReason, grpc.status>> = {
  malformed: grpc.status.INVALID_ARGUMENT,
  'too-large': grpc.status.INVALID_ARGUMENT,
  'csr-invalid': grpc.status.INVALID_ARGUMENT,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  superseded: grpc.status.UNAUTHENTICATED,
  'too-many-challenges': grpc.status.RESOURCE_EXHAUSTED,
  'eventlog-required': grpc.status.FAILED_PRECONDITION,
  internal: grpc.status.UNAVAILABLE,
};

/** A gRPC status for a refusal, the reason in the trailers. */
export function refusalStatus(reason: string, detail: string, code?: grpc.status): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  metadata.set(REASON_METADATA_KEY, reason);
  return { code: code ?? CODE_OF[reason as AttestationReason] ?? grpc.status.PERMISSION_DENIED, details: `${reason}: ${detail}`, metadata };
}
