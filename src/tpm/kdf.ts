/**
 * The TPM key derivation functions (TPM 2.0 Part 1 §11.4.10):
 * KDFa (SP 800-108 counter mode with HMAC) and KDFe (SP 800-56A concatenation).
 */
import { createHash, createHmac } from 'node:crypto';
import { digestSize, nodeHashName } from './constants.js';
import { TpmMarshalError } from './errors.js';

/** Far above anything a TPM derives; keeps a bad `bits` from allocating. */
export const MAX_KDF_BITS = 1 << 16;

/** A label is a NUL-terminated string; the terminator is added here. */
function labelBytes(label: string): Buffer {
  if (label.includes('\0')) throw new TpmMarshalError('KDF label', 'contains a NUL byte');
  return Buffer.concat([Buffer.from(label, 'latin1'), Buffer.alloc(1)]);
}

function checkBits(bits: number): number {
  if (!Number.isInteger(bits) || bits < 0 || bits > MAX_KDF_BITS) throw new TpmMarshalError('KDF', `bits ${bits} out of range 0..${MAX_KDF_BITS}`);
  return bits;
}

function be32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** Keeps ceil(bits/8) bytes and clears the excess high-order bits, as the TPM does. */
function truncate(out: Buffer, bits: number): Buffer {
  const bytes = Math.ceil(bits / 8);
  const r = Buffer.from(out.subarray(0, bytes));
  if (bits % 8 !== 0) r[0]! &= 0xff >> (8 - (bits % 8));
  return r;
}

/** KDFa(hashAlg, key, label, contextU, contextV, bits). */
export function kdfa(hashAlg: number, key: Uint8Array, label: string, contextU: Uint8Array, contextV: Uint8Array, bits: number): Buffer {
  checkBits(bits);
  const hash = nodeHashName(hashAlg);
  const fixed = Buffer.concat([labelBytes(label), contextU, contextV, be32(bits)]);
  const blocks = Math.ceil(bits / 8 / digestSize(hashAlg));
  const out: Buffer[] = [];
  for (let i = 1; i <= blocks; i++) out.push(createHmac(hash, key).update(be32(i)).update(fixed).digest());
  return truncate(Buffer.concat(out), bits);
}

/** KDFe(hashAlg, Z, label, partyUInfo, partyVInfo, bits). */
export function kdfe(hashAlg: number, z: Uint8Array, label: string, partyU: Uint8Array, partyV: Uint8Array, bits: number): Buffer {
  checkBits(bits);
  const hash = nodeHashName(hashAlg);
  const other = Buffer.concat([labelBytes(label), partyU, partyV]);
  const blocks = Math.ceil(bits / 8 / digestSize(hashAlg));
  const out: Buffer[] = [];
  for (let i = 1; i <= blocks; i++) out.push(createHash(hash).update(be32(i)).update(z).update(other).digest());
  return truncate(Buffer.concat(out), bits);
}
