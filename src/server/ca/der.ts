/**
 * The few DER primitives the hot path needs: encoding a TLV with a minimal
 * length, and walking a strict DER TLV (definite, minimal lengths) to slice
 * raw bytes out of untrusted input without copying.
 */

/** Thrown by the reader on malformed DER; callers turn it into their own typed error. */
export class DerError extends Error {
  override readonly name = 'DerError';
}

export const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

export function encodeLength(len: number): Buffer {
  if (len < 0x80) return Buffer.from([len]);
  if (len < 0x100) return Buffer.from([0x81, len]);
  if (len < 0x10000) return Buffer.from([0x82, len >> 8, len & 0xff]);
  if (len < 0x1000000) return Buffer.from([0x83, len >> 16, (len >> 8) & 0xff, len & 0xff]);
  throw new RangeError('DER length too large');
}

function lengthBytes(len: number): number {
  return len < 0x80 ? 1 : len < 0x100 ? 2 : len < 0x10000 ? 3 : 4;
}

/** Concatenates `parts` under one tag, with a minimal DER length, in one allocation. */
export function tlv(tag: number, ...parts: Uint8Array[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  if (len >= 0x1000000) throw new RangeError('DER length too large');
  const n = lengthBytes(len);
  const out = Buffer.allocUnsafe(1 + n + len);
  out[0] = tag;
  if (n === 1) out[1] = len;
  else {
    out[1] = 0x80 | (n - 1);
    for (let i = n - 1, v = len; i >= 1; i--, v >>>= 8) out[1 + i] = v & 0xff;
  }
  let off = 1 + n;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

export const seq = (...parts: Uint8Array[]): Buffer => tlv(TAG.SEQUENCE, ...parts);

/** Encodes a dotted OID as a DER OBJECT IDENTIFIER. */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map((a) => Number(a));
  const [a0, a1, ...rest] = arcs;
  if (a0 === undefined || a1 === undefined) throw new RangeError(`bad OID ${dotted}`);
  const out: number[] = [];
  const push = (v: number): void => {
    const bytes = [v & 0x7f];
    v = Math.floor(v / 128);
    while (v > 0) {
      bytes.unshift((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    out.push(...bytes);
  };
  push(a0 * 40 + a1);
  for (const r of rest) push(r);
  return tlv(TAG.OID, Buffer.from(out));
}

/** A non-negative big-endian magnitude as a minimal DER INTEGER. */
export function unsignedInteger(magnitude: Uint8Array): Buffer {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const body = Buffer.from(magnitude.subarray(i));
  if (body.length === 0) return Buffer.from([TAG.INTEGER, 1, 0]);
  return (body[0]! & 0x80) !== 0 ? tlv(TAG.INTEGER, Buffer.from([0]), body) : tlv(TAG.INTEGER, body);
}

export function smallInteger(n: number): Buffer {
  if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw new RangeError('integer out of range');
  const bytes: number[] = [];
  let v = n;
  do {
    bytes.unshift(v & 0xff);
    v = Math.floor(v / 256);
  } while (v > 0);
  return unsignedInteger(Buffer.from(bytes));
}

/** BIT STRING with no unused bits. */
export const bitString = (content: Uint8Array): Buffer => tlv(TAG.BIT_STRING, Buffer.from([0]), content);
export const octetString = (content: Uint8Array): Buffer => tlv(TAG.OCTET_STRING, content);

/** One parsed TLV: positions are absolute offsets into the buffer it came from. */
export interface Tlv {
  readonly tag: number;
  /** Offset of the tag byte. */
  readonly start: number;
  /** Offset of the first content byte. */
  readonly contentStart: number;
  /** Offset just past the content. */
  readonly end: number;
}

/**
 * Reads one TLV at `offset`, refusing what DER forbids (indefinite or
 * non-minimal lengths, high tag numbers) and anything running past `limit`.
 */
export function readTlv(buf: Uint8Array, offset: number, limit: number = buf.length): Tlv {
  if (offset + 2 > limit) throw new DerError('truncated TLV header');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError('high-number tags are not used here');
  const first = buf[offset + 1]!;
  let len: number;
  let headerLen: number;
  if (first < 0x80) {
    len = first;
    headerLen = 2;
  } else {
    const n = first & 0x7f;
    if (n === 0) throw new DerError('indefinite length is not DER');
    if (n > 3) throw new DerError('length too large');
    if (offset + 2 + n > limit) throw new DerError('truncated length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i]!;
    if (buf[offset + 2] === 0 || len < 0x80) throw new DerError('non-minimal length');
    headerLen = 2 + n;
  }
  const contentStart = offset + headerLen;
  const end = contentStart + len;
  if (end > limit) throw new DerError('content runs past its container');
  return { tag, start: offset, contentStart, end };
}

/** Reads the TLVs directly inside `parent` (which must be constructed), in order. */
export function children(buf: Uint8Array, parent: Tlv): Tlv[] {
  if ((parent.tag & 0x20) === 0) throw new DerError('not a constructed type');
  const out: Tlv[] = [];
  let off = parent.contentStart;
  while (off < parent.end) {
    const t = readTlv(buf, off, parent.end);
    out.push(t);
    off = t.end;
  }
  return out;
}

export function slice(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.start, t.end);
}

export function content(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.contentStart, t.end);
}
