/**
 * ECDSA signature encodings. PKCS#11 CKM_ECDSA returns IEEE P1363 r||s (also
 * the JWS form); X.509 and CMS want DER `SEQUENCE { INTEGER r, INTEGER s }`.
 */

export class InvalidEcdsaSignatureError extends Error {
  override name = 'InvalidEcdsaSignatureError';
  constructor(readonly reason: string) {
    super(`invalid ECDSA signature: ${reason}`);
  }
}

function derInteger(unsigned: Uint8Array): Buffer {
  let i = 0;
  while (i < unsigned.length - 1 && unsigned[i] === 0) i++;
  const body = unsigned.subarray(i);
  const pad = (body[0] ?? 0) & 0x80 ? 1 : 0;
  const out = Buffer.alloc(2 + pad + body.length);
  out[0] = 0x02;
  out[1] = pad + body.length;
  out.set(body, 2 + pad);
  return out;
}

/** r||s (two equal halves, at most 66 bytes each: P-521) → DER. */
export function p1363ToDer(sig: Uint8Array): Buffer {
  if (sig.length === 0 || sig.length % 2 !== 0 || sig.length > 132) throw new InvalidEcdsaSignatureError(`P1363 length ${sig.length} is not 2×(1..66)`);
  const half = sig.length / 2;
  const r = derInteger(sig.subarray(0, half));
  const s = derInteger(sig.subarray(half));
  const len = r.length + s.length;
  // len ≤ 2×(2+1+66) = 138 > 127 only for P-521: then long form with one length byte.
  const head = len < 0x80 ? Buffer.from([0x30, len]) : Buffer.from([0x30, 0x81, len]);
  return Buffer.concat([head, r, s]);
}

function readLength(der: Uint8Array, at: number): [len: number, next: number] {
  const b = der[at];
  if (b === undefined) throw new InvalidEcdsaSignatureError('truncated length');
  if (b < 0x80) return [b, at + 1];
  if (b === 0x81) {
    const l = der[at + 1];
    if (l === undefined) throw new InvalidEcdsaSignatureError('truncated length');
    if (l < 0x80) throw new InvalidEcdsaSignatureError('non-minimal length');
    return [l, at + 2];
  }
  throw new InvalidEcdsaSignatureError('length form not allowed for an ECDSA signature');
}

function readInteger(der: Uint8Array, at: number, size: number): [value: Buffer, next: number] {
  if (der[at] !== 0x02) throw new InvalidEcdsaSignatureError('expected INTEGER');
  const [len, start] = readLength(der, at + 1);
  const end = start + len;
  if (len === 0 || end > der.length) throw new InvalidEcdsaSignatureError('INTEGER truncated or empty');
  const body = der.subarray(start, end);
  if (body[0]! & 0x80) throw new InvalidEcdsaSignatureError('negative INTEGER');
  if (body.length > 1 && body[0] === 0 && !(body[1]! & 0x80)) throw new InvalidEcdsaSignatureError('non-minimal INTEGER');
  const stripped = body[0] === 0 ? body.subarray(1) : body;
  if (stripped.length > size) throw new InvalidEcdsaSignatureError(`INTEGER longer than ${size} bytes`);
  const out = Buffer.alloc(size);
  out.set(stripped, size - stripped.length);
  return [out, end];
}

/** DER → r||s with each half `size` bytes (32 for P-256, 48 for P-384). Strict DER: no trailing data, minimal encodings. */
export function derToP1363(der: Uint8Array, size: number): Buffer {
  if (!Number.isInteger(size) || size < 1 || size > 66) throw new InvalidEcdsaSignatureError(`component size ${size} is not 1..66`);
  if (der.length > 2 * size + 9) throw new InvalidEcdsaSignatureError('longer than any signature of this size');
  if (der[0] !== 0x30) throw new InvalidEcdsaSignatureError('expected SEQUENCE');
  const [len, start] = readLength(der, 1);
  if (start + len !== der.length) throw new InvalidEcdsaSignatureError('SEQUENCE length does not match the input');
  const [r, afterR] = readInteger(der, start, size);
  const [s, afterS] = readInteger(der, afterR, size);
  if (afterS !== der.length) throw new InvalidEcdsaSignatureError('trailing data inside SEQUENCE');
  return Buffer.concat([r, s]);
}
