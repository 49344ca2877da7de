/**
 * Concatenated DER certificates, the form the Workload API carries chains and
 * bundles in (`x509_svid`, `bundle`, X509BundlesResponse). Each element is
 * one outer SEQUENCE; its length comes from the DER header, so the split needs
 * no knowledge of what is inside.
 */
import { X509Certificate } from 'node:crypto';

export class DerSplitError extends Error {
  override readonly name = 'DerSplitError';
}

/** A certificate larger than this is refused before any allocation: real ones are a few KiB. */
const MAX_CERT_BYTES = 64 * 1024;

/** Byte ranges of the top-level DER SEQUENCEs in `buf`; throws DerSplitError on anything else. */
export function splitDer(buf: Uint8Array, maxItems = 64): Uint8Array[] {
  const out: Uint8Array[] = [];
  let off = 0;
  while (off < buf.length) {
    if (out.length >= maxItems) throw new DerSplitError(`more than ${maxItems} certificates`);
    if (buf[off] !== 0x30) throw new DerSplitError(`expected a SEQUENCE at offset ${off}`);
    const first = buf[off + 1];
    if (first === undefined) throw new DerSplitError(`truncated length at offset ${off}`);
    let len: number;
    let header: number;
    if (first < 0x80) {
      len = first;
      header = 2;
    } else {
      const n = first & 0x7f;
      // DER: no indefinite length; a certificate never needs more than 3 length bytes.
      if (n === 0 || n > 3) throw new DerSplitError(`unsupported length encoding at offset ${off}`);
      if (off + 2 + n > buf.length) throw new DerSplitError(`truncated length at offset ${off}`);
      len = 0;
      for (let k = 0; k < n; k++) len = len * 256 + (buf[off + 2 + k] as number);
      if (len < 0x80 || (n > 1 && buf[off + 2] === 0)) throw new DerSplitError(`non-minimal length at offset ${off}`);
      header = 2 + n;
    }
    if (len > MAX_CERT_BYTES) throw new DerSplitError(`element of ${len} bytes at offset ${off} is too large`);
    const end = off + header + len;
    if (end > buf.length) throw new DerSplitError(`element at offset ${off} runs past the end`);
    out.push(buf.subarray(off, end));
    off = end;
  }
  return out;
}

/** Parses concatenated DER certificates; an empty buffer gives an empty list. */
export function parseDerCertificates(buf: Uint8Array, maxItems = 64): X509Certificate[] {
  return splitDer(buf, maxItems).map((der, i) => {
    try {
      return new X509Certificate(der);
    } catch (err) {
      throw new DerSplitError(`element ${i} is not a certificate: ${(err as Error).message}`);
    }
  });
}

export function concatDer(certs: readonly X509Certificate[]): Buffer {
  return Buffer.concat(certs.map((c) => c.raw));
}

/** One DER object as PEM, base64 in 64-character lines. */
export function derToPem(der: Uint8Array, label = 'CERTIFICATE'): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}
