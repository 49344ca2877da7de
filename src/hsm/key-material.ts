/**
 * What the token says about a key, turned into what Node understands: curve
 * OIDs, CKA_EC_POINT in both encodings, RSA modulus/exponent → KeyObject.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import type { HsmKeyType } from './config.js';

export class InvalidPublicKeyError extends Error {
  override name = 'InvalidPublicKeyError';
  constructor(readonly reason: string) {
    super(`the token returned an unusable public key: ${reason}`);
  }
}

export interface EcCurve {
  readonly type: 'ec-p256' | 'ec-p384';
  readonly jwkCrv: 'P-256' | 'P-384';
  /** Bytes of one coordinate, of r and of s. */
  readonly size: number;
  /** DER OBJECT IDENTIFIER, the value of CKA_EC_PARAMS. */
  readonly params: Buffer;
}

export const EC_CURVES: readonly EcCurve[] = [
  { type: 'ec-p256', jwkCrv: 'P-256', size: 32, params: Buffer.from('06082a8648ce3d030107', 'hex') },
  { type: 'ec-p384', jwkCrv: 'P-384', size: 48, params: Buffer.from('06052b81040022', 'hex') },
];

export function curveOf(type: HsmKeyType): EcCurve | undefined {
  return EC_CURVES.find((c) => c.type === type);
}

export function curveByParams(params: Buffer): EcCurve | undefined {
  return EC_CURVES.find((c) => c.params.equals(params));
}

export const RSA_BITS: Record<'rsa-2048' | 'rsa-3072', number> = { 'rsa-2048': 2048, 'rsa-3072': 3072 };

/**
 * CKA_EC_POINT: PKCS#11 says DER OCTET STRING around the X9.62 point, some
 * tokens return the bare point. Only uncompressed points are accepted.
 */
export function decodeEcPoint(value: Uint8Array, size: number): { x: Buffer; y: Buffer } {
  const raw = 1 + 2 * size;
  let point: Uint8Array;
  if (value.length === raw && value[0] === 0x04) point = value;
  else if (value[0] === 0x04 && value.length === raw + 2 && value[1] === raw && raw < 0x80) point = value.subarray(2);
  else if (value[0] === 0x04 && value.length === raw + 3 && value[1] === 0x81 && value[2] === raw) point = value.subarray(3);
  else throw new InvalidPublicKeyError(`CKA_EC_POINT of ${value.length} bytes is neither 04||X||Y nor an OCTET STRING around it`);
  if (point[0] !== 0x04) throw new InvalidPublicKeyError('EC point is not uncompressed');
  return { x: Buffer.from(point.subarray(1, 1 + size)), y: Buffer.from(point.subarray(1 + size)) };
}

export function ecPublicKey(curve: EcCurve, ecPoint: Uint8Array): KeyObject {
  const { x, y } = decodeEcPoint(ecPoint, curve.size);
  try {
    return createPublicKey({ key: { kty: 'EC', crv: curve.jwkCrv, x: x.toString('base64url'), y: y.toString('base64url') }, format: 'jwk' });
  } catch {
    throw new InvalidPublicKeyError(`EC point is not on ${curve.jwkCrv}`);
  }
}

function stripZeros(b: Uint8Array): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return Buffer.from(b.subarray(i));
}

export function rsaPublicKey(modulus: Uint8Array, exponent: Uint8Array): KeyObject {
  const n = stripZeros(modulus);
  const e = stripZeros(exponent);
  if (n.length < 128 || e.length === 0 || e.length > 8) throw new InvalidPublicKeyError('RSA modulus or exponent out of range');
  try {
    return createPublicKey({ key: { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') }, format: 'jwk' });
  } catch {
    throw new InvalidPublicKeyError('RSA modulus/exponent rejected by node:crypto');
  }
}

/** DigestInfo prefixes (RFC 8017 §9.2 note 1) for CKM_RSA_PKCS over a hash computed in Node. */
export const DIGEST_INFO_PREFIX = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
} as const;
