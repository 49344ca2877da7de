/** TPM 2.0 constants (TPM 2.0 Part 2) used by keel, and facts about the algorithms. */
import { TpmUnsupportedError } from './errors.js';

/** TPM_ALG_ID */
export const TPM_ALG = {
  RSA: 0x0001,
  TDES: 0x0003,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  MGF1: 0x0007,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM3_256: 0x0012,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  SHA3_256: 0x0027,
  SHA3_384: 0x0028,
  SHA3_512: 0x0029,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
} as const;
export type TpmAlgId = number;

/** TPM_ECC_CURVE */
export const TPM_ECC_CURVE = {
  NIST_P192: 0x0001,
  NIST_P224: 0x0002,
  NIST_P256: 0x0003,
  NIST_P384: 0x0004,
  NIST_P521: 0x0005,
  BN_P256: 0x0010,
  BN_P638: 0x0011,
  SM2_P256: 0x0020,
} as const;

/** TPMA_OBJECT bits */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
  x509sign: 1 << 19,
} as const;
export type TpmaObjectName = keyof typeof TPMA_OBJECT;

/** TPM_ST values of attestation structures */
export const TPM_ST = {
  ATTEST_NV: 0x8014,
  ATTEST_COMMAND_AUDIT: 0x8015,
  ATTEST_SESSION_AUDIT: 0x8016,
  ATTEST_CERTIFY: 0x8017,
  ATTEST_QUOTE: 0x8018,
  ATTEST_TIME: 0x8019,
  ATTEST_CREATION: 0x801a,
  ATTEST_NV_DIGEST: 0x801c,
} as const;

/** TPM_GENERATED_VALUE: the magic of every TPMS_ATTEST the TPM signs ("\xffTCG"). */
export const TPM_GENERATED_VALUE = 0xff544347;

/** Largest digest (SHA-512): bounds TPM2B_DIGEST, TPM2B_NAME, TPM2B_DATA. */
export const MAX_DIGEST_SIZE = 64;
/** sizeof(TPMU_NAME): a nameAlg and a digest. */
export const MAX_NAME_SIZE = 2 + MAX_DIGEST_SIZE;
/** sizeof(TPMT_HA), the bound of a TPM2B_DATA. */
export const MAX_DATA_SIZE = 2 + MAX_DIGEST_SIZE;
/** RSA-4096 */
export const MAX_RSA_KEY_BYTES = 512;
/** Up to BN P638. */
export const MAX_ECC_KEY_BYTES = 80;

interface HashInfo {
  readonly size: number;
  /** node:crypto name, absent when Node has no implementation (SM3). */
  readonly node?: string;
}

const HASHES: ReadonlyMap<number, HashInfo> = new Map<number, HashInfo>([
  [TPM_ALG.SHA1, { size: 20, node: 'sha1' }],
  [TPM_ALG.SHA256, { size: 32, node: 'sha256' }],
  [TPM_ALG.SHA384, { size: 48, node: 'sha384' }],
  [TPM_ALG.SHA512, { size: 64, node: 'sha512' }],
  [TPM_ALG.SM3_256, { size: 32 }],
  [TPM_ALG.SHA3_256, { size: 32, node: 'sha3-256' }],
  [TPM_ALG.SHA3_384, { size: 48, node: 'sha3-384' }],
  [TPM_ALG.SHA3_512, { size: 64, node: 'sha3-512' }],
]);

/** True for a TPM_ALG_ID that names a hash the TPM spec defines. */
export function isHashAlg(alg: number): boolean {
  return HASHES.has(alg);
}

/** Digest size of a TPM hash algorithm. */
export function digestSize(alg: number): number {
  const h = HASHES.get(alg);
  if (!h) throw new TpmUnsupportedError(`hash algorithm ${hex16(alg)}`);
  return h.size;
}

/** node:crypto name of a TPM hash algorithm. */
export function nodeHashName(alg: number): string {
  const h = HASHES.get(alg);
  if (!h?.node) throw new TpmUnsupportedError(`hash algorithm ${hex16(alg)}`);
  return h.node;
}

interface CurveInfo {
  readonly jwk: 'P-256' | 'P-384' | 'P-521';
  readonly node: string;
  /** Bytes of a coordinate. */
  readonly size: number;
}

const CURVES: ReadonlyMap<number, CurveInfo> = new Map<number, CurveInfo>([
  [TPM_ECC_CURVE.NIST_P256, { jwk: 'P-256', node: 'prime256v1', size: 32 }],
  [TPM_ECC_CURVE.NIST_P384, { jwk: 'P-384', node: 'secp384r1', size: 48 }],
  [TPM_ECC_CURVE.NIST_P521, { jwk: 'P-521', node: 'secp521r1', size: 66 }],
]);

/** The NIST curves keel turns into KeyObjects. */
export function curveInfo(curve: number): CurveInfo {
  const c = CURVES.get(curve);
  if (!c) throw new TpmUnsupportedError(`ECC curve ${hex16(curve)}`);
  return c;
}

export function curveFromJwkName(name: string): number {
  for (const [id, c] of CURVES) if (c.jwk === name) return id;
  throw new TpmUnsupportedError(`ECC curve ${name}`);
}

/** Names of the TPMA_OBJECT bits set in `attributes`, for messages. */
export function attributeNames(attributes: number): TpmaObjectName[] {
  return (Object.keys(TPMA_OBJECT) as TpmaObjectName[]).filter((k) => (attributes & TPMA_OBJECT[k]) !== 0);
}

export function hex16(v: number): string {
  return `0x${v.toString(16).padStart(4, '0')}`;
}
