/**
 * Workload API response messages, in the shape proto-loader expects
 * (snake_case fields, Buffers for bytes), built from what the IdentitySource holds.
 */
import type { BundleSnapshot, Identity, MatchedEntry, TrustDomainBundle } from './identity-source.js';

export interface X509SvidMessage {
  spiffe_id: string;
  x509_svid: Buffer;
  x509_svid_key: Buffer;
  bundle: Buffer;
  hint: string;
}
export interface X509SvidResponse {
  svids: X509SvidMessage[];
  crl: Buffer[];
  federated_bundles: Record<string, Buffer>;
}
export interface X509BundlesResponse {
  crl: Buffer[];
  bundles: Record<string, Buffer>;
}
export interface JwtBundlesResponse {
  bundles: Record<string, Buffer>;
}

/** The federated bundles the identities are entitled to, sorted by trust domain. */
function federatedFor(identities: readonly Pick<MatchedEntry, 'federatesWith'>[], bundles: BundleSnapshot): TrustDomainBundle[] {
  const wanted = new Set(identities.flatMap((i) => i.federatesWith.map((td) => td.name)));
  wanted.delete(bundles.own.trustDomain.name);
  return bundles.federated.filter((b) => wanted.has(b.trustDomain.name)).sort((a, b) => (a.trustDomain.name < b.trustDomain.name ? -1 : 1));
}

export function x509SvidResponse(identities: readonly Identity[], bundles: BundleSnapshot): X509SvidResponse {
  const federated_bundles: Record<string, Buffer> = {};
  for (const b of federatedFor(identities, bundles)) federated_bundles[b.trustDomain.idString] = b.x509Der;
  return {
    svids: identities.map((i) => ({
      spiffe_id: i.spiffeId.toString(),
      x509_svid: Buffer.concat(i.x509Svid.chainDer),
      x509_svid_key: i.x509Svid.privateKeyPkcs8,
      bundle: bundles.own.x509Der,
      hint: i.hint,
    })),
    crl: [],
    federated_bundles,
  };
}

/** The own trust domain's bundle, plus the federated ones the caller's identities federate with. */
export function x509BundlesResponse(identities: readonly Pick<MatchedEntry, 'federatesWith'>[], bundles: BundleSnapshot): X509BundlesResponse {
  const out: Record<string, Buffer> = { [bundles.own.trustDomain.idString]: bundles.own.x509Der };
  for (const b of federatedFor(identities, bundles)) out[b.trustDomain.idString] = b.x509Der;
  return { crl: [], bundles: out };
}

export function jwtBundlesResponse(identities: readonly Pick<MatchedEntry, 'federatesWith'>[], bundles: BundleSnapshot): JwtBundlesResponse {
  const out: Record<string, Buffer> = { [bundles.own.trustDomain.idString]: bundles.own.jwks };
  for (const b of federatedFor(identities, bundles)) out[b.trustDomain.idString] = b.jwks;
  return { bundles: out };
}

/**
 * google.protobuf.Value / Struct. proto-loader takes the well-known types from
 * protobufjs's bundled descriptors, whose field names are camelCase even with keepCase.
 */
export type StructValue =
  | { nullValue: 'NULL_VALUE' }
  | { numberValue: number }
  | { stringValue: string }
  | { boolValue: boolean }
  | { structValue: ProtoStruct }
  | { listValue: { values: StructValue[] } };
export interface ProtoStruct {
  fields: Record<string, StructValue>;
}

const MAX_DEPTH = 32;

function toValue(v: unknown, depth: number): StructValue {
  if (depth > MAX_DEPTH) throw new RangeError('claims are nested too deeply for a protobuf Struct');
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map((x) => toValue(x, depth + 1)) } };
  if (typeof v === 'object') return { structValue: toStruct(v as Record<string, unknown>, depth + 1) };
  throw new TypeError(`a ${typeof v} cannot be a protobuf Value`);
}

/** JSON claims → google.protobuf.Struct (JSON numbers become doubles, as in every Struct). */
export function toStruct(obj: Readonly<Record<string, unknown>>, depth = 0): ProtoStruct {
  const fields: Record<string, StructValue> = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v, depth);
  return { fields };
}
