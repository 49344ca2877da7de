/**
 * TPMT_SIGNATURE (TPM 2.0 Part 2 §11.3.4) and its verification with node:crypto.
 * A TPM signs the digest of the message with the scheme's hash, so verifying
 * the message with that hash name is exactly the TPM's check.
 */
import { constants, verify, type KeyObject } from 'node:crypto';
import { MAX_ECC_KEY_BYTES, MAX_RSA_KEY_BYTES, TPM_ALG, digestSize, hex16, isHashAlg, nodeHashName } from './constants.js';
import { TpmMarshalError, TpmUnsupportedError } from './errors.js';
import { TpmReader, parseExact } from './reader.js';
import { TpmWriter } from './writer.js';

type RsaSigAlg = typeof TPM_ALG.RSASSA | typeof TPM_ALG.RSAPSS;
type EccSigAlg = typeof TPM_ALG.ECDSA | typeof TPM_ALG.ECDAA | typeof TPM_ALG.SM2 | typeof TPM_ALG.ECSCHNORR;

export type TpmtSignature =
  | { readonly sigAlg: RsaSigAlg; readonly hashAlg: number; readonly sig: Buffer }
  | { readonly sigAlg: EccSigAlg; readonly hashAlg: number; readonly r: Buffer; readonly s: Buffer }
  | { readonly sigAlg: typeof TPM_ALG.HMAC; readonly hashAlg: number; readonly digest: Buffer }
  | { readonly sigAlg: typeof TPM_ALG.NULL };

const ECC_SIG_ALGS: ReadonlySet<number> = new Set([TPM_ALG.ECDSA, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR]);

/** Reads a TPMT_SIGNATURE at the cursor. */
export function readTpmtSignature(r: TpmReader): TpmtSignature {
  return r.within('TPMT_SIGNATURE', () => {
    const algAt = r.offset;
    const sigAlg = r.u16();
    if (sigAlg === TPM_ALG.NULL) return { sigAlg };
    const isRsa = sigAlg === TPM_ALG.RSASSA || sigAlg === TPM_ALG.RSAPSS;
    if (!isRsa && !ECC_SIG_ALGS.has(sigAlg) && sigAlg !== TPM_ALG.HMAC) {
      r.fail(`${hex16(sigAlg)} is not a signature algorithm`, algAt);
    }
    const hashAt = r.offset;
    const hashAlg = r.u16();
    if (!isHashAlg(hashAlg)) r.fail(`${hex16(hashAlg)} is not a hash algorithm`, hashAt);
    if (isRsa) return { sigAlg, hashAlg, sig: r.within('sig', () => r.sized(MAX_RSA_KEY_BYTES)) };
    if (sigAlg === TPM_ALG.HMAC) return { sigAlg, hashAlg, digest: r.within('digest', () => r.bytes(digestSize(hashAlg))) };
    const sr = r.within('signatureR', () => r.sized(MAX_ECC_KEY_BYTES));
    const ss = r.within('signatureS', () => r.sized(MAX_ECC_KEY_BYTES));
    return { sigAlg: sigAlg as EccSigAlg, hashAlg, r: sr, s: ss };
  });
}

/** Parses TPMT_SIGNATURE bytes (what `tpm2_quote -s` writes), refusing trailing bytes. */
export function parseTpmtSignature(bytes: Uint8Array): TpmtSignature {
  return parseExact(bytes, readTpmtSignature);
}

export function marshalTpmtSignature(sig: TpmtSignature): Buffer {
  const w = new TpmWriter('TPMT_SIGNATURE', 600);
  w.u16(sig.sigAlg);
  if (sig.sigAlg === TPM_ALG.NULL) return w.toBuffer();
  w.u16(sig.hashAlg);
  if ('sig' in sig) w.sized(sig.sig, MAX_RSA_KEY_BYTES, 'sig');
  else if ('digest' in sig) {
    if (sig.digest.length !== digestSize(sig.hashAlg)) throw new TpmMarshalError('TPMT_SIGNATURE', 'HMAC digest size does not match its hash');
    w.bytes(sig.digest);
  } else w.sized(sig.r, MAX_ECC_KEY_BYTES, 'signatureR').sized(sig.s, MAX_ECC_KEY_BYTES, 'signatureS');
  return w.toBuffer();
}

const CURVE_BYTES: Readonly<Record<string, number>> = { prime256v1: 32, secp384r1: 48, secp521r1: 66 };

/** Left-pads an unsigned big-endian integer to `size` bytes; null if it does not fit. */
function fixedWidth(v: Buffer, size: number): Buffer | null {
  let i = 0;
  while (i < v.length && v[i] === 0) i++;
  const s = v.subarray(i);
  if (s.length > size) return null;
  return Buffer.concat([Buffer.alloc(size - s.length), s]);
}

/**
 * Verifies a TPM signature (RSASSA, RSAPSS or ECDSA) over `message` with `key`.
 * False when the signature does not verify or does not fit the key; throws
 * TpmUnsupportedError for schemes node:crypto cannot check (ECDAA, SM2, HMAC…).
 */
export function verifyTpmSignature(key: KeyObject, message: Uint8Array, sig: TpmtSignature): boolean {
  if (sig.sigAlg === TPM_ALG.NULL) return false;
  const hash = nodeHashName(sig.hashAlg);
  if (sig.sigAlg === TPM_ALG.RSASSA || sig.sigAlg === TPM_ALG.RSAPSS) {
    if (key.asymmetricKeyType !== 'rsa') return false;
    const bytes = (key.asymmetricKeyDetails?.modulusLength ?? 0) / 8;
    const s = fixedWidth(sig.sig, bytes);
    if (!s) return false;
    const padding = sig.sigAlg === TPM_ALG.RSASSA
      ? { padding: constants.RSA_PKCS1_PADDING }
      // TPMs use the largest salt their policy allows (usually the hash size): accept any.
      : { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_AUTO };
    try {
      return verify(hash, message, { key, ...padding }, s);
    } catch {
      return false;
    }
  }
  if (sig.sigAlg === TPM_ALG.ECDSA) {
    if (key.asymmetricKeyType !== 'ec') return false;
    const size = CURVE_BYTES[key.asymmetricKeyDetails?.namedCurve ?? ''];
    if (!size) throw new TpmUnsupportedError(`ECDSA curve ${key.asymmetricKeyDetails?.namedCurve ?? '?'}`);
    // TPMs may drop leading zero bytes of r and s: pad back to the curve size for P1363.
    const r = fixedWidth(sig.r, size);
    const s = fixedWidth(sig.s, size);
    if (!r || !s) return false;
    try {
      return verify(hash, message, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([r, s]));
    } catch {
      return false;
    }
  }
  throw new TpmUnsupportedError(`signature algorithm ${hex16(sig.sigAlg)}`);
}

/** DER INTEGER body of an unsigned big-endian value: leading zeros dropped, a 0x00 added when the top bit is set. */
function derUnsigned(v: Buffer): Buffer {
  let i = 0;
  while (i < v.length - 1 && v[i] === 0) i++;
  const t = v.subarray(i);
  const body = t[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), t]) : t;
  return Buffer.concat([Buffer.from([0x02, body.length]), body]);
}

/** An ECDSA TPMT_SIGNATURE as the DER `Ecdsa-Sig-Value` X.509 and PKCS#10 carry (P-256/P-384 sizes). */
export function ecdsaSignatureDer(sig: TpmtSignature): Buffer {
  if (sig.sigAlg !== TPM_ALG.ECDSA) throw new TpmUnsupportedError(`signature algorithm ${hex16(sig.sigAlg)} (want ECDSA)`);
  if (sig.r.length === 0 || sig.s.length === 0 || sig.r.length > 66 || sig.s.length > 66) throw new TpmMarshalError('TPMT_SIGNATURE', 'ECDSA r or s has a bad size');
  const body = Buffer.concat([derUnsigned(sig.r), derUnsigned(sig.s)]);
  if (body.length > 127) throw new TpmMarshalError('TPMT_SIGNATURE', 'ECDSA signature too long for short-form DER');
  return Buffer.concat([Buffer.from([0x30, body.length]), body]);
}
