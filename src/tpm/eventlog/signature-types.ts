/**
 * EFI_SIGNATURE_LIST signature types (UEFI spec, "Signature Database"): every
 * entry of PK, KEK, db or dbx gets a name, a label for messages and one value
 * that identifies it, so that a policy can compare every entry the firmware
 * acts on, whatever its type, and an unknown type is still named (by GUID).
 *
 * The value of an entry:
 * - `x509`: SHA-256 of the certificate DER (what keel has always pinned);
 * - hashes (`sha1` … `sha512`): the hash itself;
 * - `x509-sha256/384/512`: the whole EFI_CERT_X509_SHA* structure, the hash of
 *   the certificate's TBS followed by the 16-byte EFI_TIME of revocation
 *   (both decide what the firmware revokes);
 * - `external-management`: its one byte;
 * - RSA-2048 keys, PKCS#7 and unknown types: SHA-256 of the SignatureData.
 * A policy names a typed entry `<name>:<value>` (an unknown type by its GUID).
 */
import { createHash } from 'node:crypto';

export type SignatureTypeName =
  | 'x509'
  | 'sha256'
  | 'sha1'
  | 'sha224'
  | 'sha384'
  | 'sha512'
  | 'rsa2048'
  | 'rsa2048-sha256'
  | 'rsa2048-sha1'
  | 'x509-sha256'
  | 'x509-sha384'
  | 'x509-sha512'
  | 'external-management'
  | 'pkcs7';

export interface SignatureTypeInfo {
  readonly name: SignatureTypeName;
  /** The spec's name without `_GUID`, e.g. `EFI_CERT_SHA384`. */
  readonly label: string;
  readonly guid: string;
  /** Size of SignatureData the spec fixes for the type; undefined: variable (X.509, PKCS#7). */
  readonly dataSize: number | undefined;
  /** `data`: the value is the data in hex; `sha256`: the SHA-256 of the data. */
  readonly value: 'data' | 'sha256';
}

const T = (name: SignatureTypeName, label: string, guid: string, dataSize: number | undefined, value: 'data' | 'sha256'): SignatureTypeInfo => ({
  name, label, guid, dataSize, value,
});

export const SIGNATURE_TYPES: readonly SignatureTypeInfo[] = [
  T('x509', 'EFI_CERT_X509', 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072', undefined, 'sha256'),
  T('sha256', 'EFI_CERT_SHA256', 'c1c41626-504c-4092-aca9-41f936934328', 32, 'data'),
  T('sha1', 'EFI_CERT_SHA1', '826ca512-cf10-4ac9-b187-be01496631bd', 20, 'data'),
  T('sha224', 'EFI_CERT_SHA224', '0b6e5233-a65c-44c9-9407-d9ab83bfc8bd', 28, 'data'),
  T('sha384', 'EFI_CERT_SHA384', 'ff3e5307-9fd0-48c9-85f1-8ad56c701e01', 48, 'data'),
  T('sha512', 'EFI_CERT_SHA512', '093e0fae-a6c4-4f50-9f1b-d41e2b89c19a', 64, 'data'),
  T('rsa2048', 'EFI_CERT_RSA2048', '3c5766e8-269c-4e34-aa14-ed776e85b3b6', 256, 'sha256'),
  T('rsa2048-sha256', 'EFI_CERT_RSA2048_SHA256', 'e2b36190-879b-4a3d-ad8d-f2e7bba32784', 256, 'sha256'),
  T('rsa2048-sha1', 'EFI_CERT_RSA2048_SHA1', '67f8444f-8743-48f1-a328-1eaab8736080', 256, 'sha256'),
  T('x509-sha256', 'EFI_CERT_X509_SHA256', '3bd2a492-96c0-4079-b420-fcf98ef103ed', 32 + 16, 'data'),
  T('x509-sha384', 'EFI_CERT_X509_SHA384', '7076876e-80c2-4ee6-aad2-28b349a6865b', 48 + 16, 'data'),
  T('x509-sha512', 'EFI_CERT_X509_SHA512', '446dbf63-2502-4cda-bcfa-2465d2b0fe9d', 64 + 16, 'data'),
  T('external-management', 'EFI_CERT_EXTERNAL_MANAGEMENT', '452e8ced-dfff-4b8c-ae01-5118862e682c', 1, 'data'),
  T('pkcs7', 'EFI_CERT_TYPE_PKCS7', '4aafd29d-68df-49ee-8aa9-347d375665a7', undefined, 'sha256'),
];

const BY_GUID = new Map(SIGNATURE_TYPES.map((t) => [t.guid, t]));
const BY_NAME = new Map<string, SignatureTypeInfo>(SIGNATURE_TYPES.map((t) => [t.name, t]));

export const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function signatureTypeByGuid(guid: string): SignatureTypeInfo | undefined {
  return BY_GUID.get(guid);
}

export function signatureTypeByName(name: string): SignatureTypeInfo | undefined {
  return BY_NAME.get(name);
}

/** Hex length of the value of an entry whose type is `token` (a name or, for a type keel does not know, its GUID). */
export function valueHexLength(token: string): number | undefined {
  const t = BY_NAME.get(token);
  if (t) return t.value === 'sha256' ? 64 : t.dataSize! * 2;
  return GUID_RE.test(token) && !BY_GUID.has(token) ? 64 : undefined;
}

export interface TypedSignature {
  /** Type name, or the GUID of a type keel does not know. */
  readonly type: SignatureTypeName | string;
  /** `EFI_CERT_SHA384`, or `unknown signature type <guid>`. */
  readonly label: string;
  readonly guid: string;
  /** Lowercase hex, as the header describes. */
  readonly value: string;
  /** `<type>:<value>`: how a policy names this entry. */
  readonly ref: string;
}

export function typedSignature(guid: string, data: Buffer): TypedSignature {
  const t = BY_GUID.get(guid);
  const type = t?.name ?? guid;
  const value = t?.value === 'data' ? data.toString('hex') : createHash('sha256').update(data).digest('hex');
  return { type, label: t?.label ?? `unknown signature type ${guid}`, guid, value, ref: `${type}:${value}` };
}
