/**
 * keel's Node API (proto/node.proto) as both sides see it: the service, the
 * client constructor, and the messages as proto-loader hands them over
 * (snake_case, bytes as Buffer, the oneof's name in `step`). Anything a peer
 * left out arrives as a default (empty), never undefined.
 */
import type * as grpc from '@grpc/grpc-js';
import { loadProto } from './load.js';

export interface WireAttestParams {
  ek_public: Buffer;
  ek_certificate: Buffer;
  ak_public: Buffer;
  csr: Buffer;
  agent_key_public: Buffer;
}
export interface WirePcrValues {
  bank: string;
  values: Record<string, Buffer>;
}
export interface WireChallengeResponse {
  secret: Buffer;
  quote: Buffer;
  quote_signature: Buffer;
  pcr_values: WirePcrValues[];
  event_log: Buffer;
  agent_key_certify: Buffer;
  agent_key_certify_signature: Buffer;
  event_log_sha256: Buffer;
}
export interface WireAttestRequest {
  step?: 'params' | 'challenge_response';
  params?: WireAttestParams | null;
  challenge_response?: WireChallengeResponse | null;
}
export interface WireChallenge {
  credential_blob: Buffer;
  encrypted_secret: Buffer;
  nonce: Buffer;
  pcr_selection: { bank: string; pcrs: number[] }[];
}
export interface WireAttestResult {
  spiffe_id: string;
  svid_chain: Buffer[];
  bundle: Buffer;
  expires_at: number;
  selectors: string[];
}
export interface WireAttestResponse {
  challenge?: WireChallenge;
  result?: WireAttestResult;
}
export interface WireEntry {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors: string[];
  x509_svid_ttl: number;
  jwt_svid_ttl: number;
  dns_names: string[];
  federates_with: string[];
  hint: string;
  revision: number;
}
export interface WireSyncEntriesResponse {
  entries: WireEntry[];
  x509_bundles: Record<string, Buffer>;
  jwt_bundles: Record<string, Buffer>;
  revision: number;
}
export interface WireSignX509SvidsRequest {
  requests: { entry_id: string; csr: Buffer }[];
}
export interface WireX509SvidResult {
  entry_id: string;
  cert_chain: Buffer[];
  expires_at: number;
  error: string;
}
export interface WireSignJwtSvidRequest {
  entry_id: string;
  audience: string[];
}
export interface WireSignWitSvidRequest {
  entry_id: string;
  /** JWK JSON of the workload's public key, with alg. */
  public_key_jwk: string;
}

/** The trailer that carries a refusal's reason code (`policy`, `nonce-expired`, …). */
export const REASON_METADATA_KEY = 'keel-reason';

type NodeApiPackage = { keel: { node: { v1: { NodeAPI: grpc.ServiceClientConstructor } } } };
let ctor: grpc.ServiceClientConstructor | undefined;

export function nodeApiClientConstructor(): grpc.ServiceClientConstructor {
  ctor ??= (loadProto('node.proto') as unknown as NodeApiPackage).keel.node.v1.NodeAPI;
  return ctor;
}

export function nodeApiService(): grpc.ServiceDefinition {
  return nodeApiClientConstructor().service;
}
