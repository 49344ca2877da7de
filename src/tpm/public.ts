/**
 * TPMT_PUBLIC / TPM2B_PUBLIC for RSA and ECC objects (TPM 2.0 Part 2 §12.2),
 * and their conversion to and from node:crypto public KeyObjects.
 *
 * The grammar has no optional encodings, so marshal(parse(bytes)) === bytes:
 * names computed from a parsed structure equal the TPM's.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import {
  MAX_DIGEST_SIZE, MAX_ECC_KEY_BYTES, MAX_RSA_KEY_BYTES, TPM_ALG, curveFromJwkName, curveInfo, hex16, isHashAlg,
} from './constants.js';
import { TpmKeyError, TpmMarshalError, TpmUnsupportedError } from './errors.js';
import { TpmReader, parseExact } from './reader.js';
import { TpmWriter } from './writer.js';

/** TPMT_SYM_DEF_OBJECT that is not TPM_ALG_NULL (null stands for NULL). */
export interface TpmtSymDefObject {
  readonly algorithm: number;
  readonly keyBits: number;
  readonly mode: number;
}

type HashedScheme =
  | typeof TPM_ALG.RSASSA | typeof TPM_ALG.RSAPSS | typeof TPM_ALG.OAEP
  | typeof TPM_ALG.ECDSA | typeof TPM_ALG.SM2 | typeof TPM_ALG.ECSCHNORR
  | typeof TPM_ALG.ECDH | typeof TPM_ALG.ECMQV;

/** TPMT_RSA_SCHEME / TPMT_ECC_SCHEME that is not TPM_ALG_NULL. */
export type TpmtAsymScheme =
  | { readonly scheme: typeof TPM_ALG.RSAES }
  | { readonly scheme: typeof TPM_ALG.ECDAA; readonly hashAlg: number; readonly count: number }
  | { readonly scheme: HashedScheme; readonly hashAlg: number };

/** TPMT_KDF_SCHEME that is not TPM_ALG_NULL. */
export interface TpmtKdfScheme {
  readonly scheme: typeof TPM_ALG.MGF1 | typeof TPM_ALG.KDF1_SP800_56A | typeof TPM_ALG.KDF2 | typeof TPM_ALG.KDF1_SP800_108;
  readonly hashAlg: number;
}

interface PublicCommon {
  /** TPMI_ALG_HASH+ (TPM_ALG_NULL allowed by the grammar). */
  readonly nameAlg: number;
  /** TPMA_OBJECT bits. */
  readonly objectAttributes: number;
  readonly authPolicy: Buffer;
}

export interface TpmtPublicRsa extends PublicCommon {
  readonly type: typeof TPM_ALG.RSA;
  readonly parameters: {
    readonly symmetric: TpmtSymDefObject | null;
    readonly scheme: TpmtAsymScheme | null;
    readonly keyBits: number;
    /** 0 means the default, 65537. */
    readonly exponent: number;
  };
  /** The modulus. */
  readonly unique: Buffer;
}

export interface TpmtPublicEcc extends PublicCommon {
  readonly type: typeof TPM_ALG.ECC;
  readonly parameters: {
    readonly symmetric: TpmtSymDefObject | null;
    readonly scheme: TpmtAsymScheme | null;
    readonly curveId: number;
    readonly kdf: TpmtKdfScheme | null;
  };
  readonly unique: { readonly x: Buffer; readonly y: Buffer };
}

export type TpmtPublic = TpmtPublicRsa | TpmtPublicEcc;

const SYM_ALGS: ReadonlySet<number> = new Set([TPM_ALG.AES, TPM_ALG.SM4, TPM_ALG.CAMELLIA, TPM_ALG.TDES]);
const SYM_MODES: ReadonlySet<number> = new Set([TPM_ALG.CTR, TPM_ALG.OFB, TPM_ALG.CBC, TPM_ALG.CFB, TPM_ALG.ECB, TPM_ALG.NULL]);
const RSA_SCHEMES: ReadonlySet<number> = new Set([TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.RSAES, TPM_ALG.OAEP]);
const ECC_SCHEMES: ReadonlySet<number> = new Set([
  TPM_ALG.ECDSA, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR, TPM_ALG.ECDH, TPM_ALG.ECMQV,
]);
const KDF_SCHEMES: ReadonlySet<number> = new Set([
  TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108,
]);

// ---- parsing ----

function readHashAlg(r: TpmReader, allowNull: boolean): number {
  const at = r.offset;
  const alg = r.u16();
  if (allowNull && alg === TPM_ALG.NULL) return alg;
  if (!isHashAlg(alg)) r.fail(`${hex16(alg)} is not a hash algorithm`, at);
  return alg;
}

function readSymDefObject(r: TpmReader): TpmtSymDefObject | null {
  return r.within('symmetric', () => {
    const at = r.offset;
    const algorithm = r.u16();
    if (algorithm === TPM_ALG.NULL) return null;
    if (!SYM_ALGS.has(algorithm)) r.fail(`${hex16(algorithm)} is not a symmetric algorithm`, at);
    const keyBits = r.u16();
    const modeAt = r.offset;
    const mode = r.u16();
    if (!SYM_MODES.has(mode)) r.fail(`${hex16(mode)} is not a block cipher mode`, modeAt);
    return { algorithm, keyBits, mode };
  });
}

function readAsymScheme(r: TpmReader, allowed: ReadonlySet<number>): TpmtAsymScheme | null {
  return r.within('scheme', () => {
    const at = r.offset;
    const scheme = r.u16();
    if (scheme === TPM_ALG.NULL) return null;
    if (!allowed.has(scheme)) r.fail(`${hex16(scheme)} is not a scheme for this key type`, at);
    if (scheme === TPM_ALG.RSAES) return { scheme };
    const hashAlg = readHashAlg(r, false);
    if (scheme === TPM_ALG.ECDAA) return { scheme, hashAlg, count: r.u16() };
    return { scheme: scheme as HashedScheme, hashAlg };
  });
}

function readKdfScheme(r: TpmReader): TpmtKdfScheme | null {
  return r.within('kdf', () => {
    const at = r.offset;
    const scheme = r.u16();
    if (scheme === TPM_ALG.NULL) return null;
    if (!KDF_SCHEMES.has(scheme)) r.fail(`${hex16(scheme)} is not a KDF scheme`, at);
    return { scheme: scheme as TpmtKdfScheme['scheme'], hashAlg: readHashAlg(r, false) };
  });
}

/** Reads a TPMT_PUBLIC at the cursor. */
export function readTpmtPublic(r: TpmReader): TpmtPublic {
  return r.within('TPMT_PUBLIC', () => {
    const typeAt = r.offset;
    const type = r.u16();
    const nameAlg = r.within('nameAlg', () => readHashAlg(r, true));
    const objectAttributes = r.u32();
    const authPolicy = r.within('authPolicy', () => r.sized(MAX_DIGEST_SIZE));
    if (type === TPM_ALG.RSA) {
      const symmetric = readSymDefObject(r);
      const scheme = readAsymScheme(r, RSA_SCHEMES);
      const keyBits = r.u16();
      const exponent = r.u32();
      const unique = r.within('unique', () => r.sized(MAX_RSA_KEY_BYTES));
      return { type, nameAlg, objectAttributes, authPolicy, parameters: { symmetric, scheme, keyBits, exponent }, unique };
    }
    if (type === TPM_ALG.ECC) {
      const symmetric = readSymDefObject(r);
      const scheme = readAsymScheme(r, ECC_SCHEMES);
      const curveId = r.u16();
      const kdf = readKdfScheme(r);
      const x = r.within('unique.x', () => r.sized(MAX_ECC_KEY_BYTES));
      const y = r.within('unique.y', () => r.sized(MAX_ECC_KEY_BYTES));
      return { type, nameAlg, objectAttributes, authPolicy, parameters: { symmetric, scheme, curveId, kdf }, unique: { x, y } };
    }
    return r.fail(`object type ${hex16(type)} is not RSA or ECC`, typeAt);
  });
}

/** Parses TPMT_PUBLIC bytes (no size prefix), refusing trailing bytes. */
export function parseTpmtPublic(bytes: Uint8Array): TpmtPublic {
  return parseExact(bytes, readTpmtPublic);
}

/** Reads a TPM2B_PUBLIC at the cursor: the size must be exactly the TPMT_PUBLIC it holds. */
export function readTpm2bPublic(r: TpmReader): TpmtPublic {
  return r.within('TPM2B_PUBLIC', () => r.sizedStructure(() => readTpmtPublic(r)));
}

/** Parses TPM2B_PUBLIC bytes (what `tpm2_readpublic -o` writes), refusing trailing bytes. */
export function parseTpm2bPublic(bytes: Uint8Array): TpmtPublic {
  return parseExact(bytes, readTpm2bPublic);
}

// ---- marshalling ----

function writeSym(w: TpmWriter, s: TpmtSymDefObject | null): void {
  if (!s) {
    w.u16(TPM_ALG.NULL);
    return;
  }
  if (s.algorithm === TPM_ALG.NULL) throw new TpmMarshalError('TPMT_SYM_DEF_OBJECT', 'use null, not an object, for TPM_ALG_NULL');
  w.u16(s.algorithm).u16(s.keyBits).u16(s.mode);
}

function writeScheme(w: TpmWriter, s: TpmtAsymScheme | null): void {
  if (!s) {
    w.u16(TPM_ALG.NULL);
    return;
  }
  w.u16(s.scheme);
  if (s.scheme === TPM_ALG.RSAES) return;
  w.u16(s.hashAlg);
  if (s.scheme === TPM_ALG.ECDAA) w.u16(s.count);
}

/** Marshals a TPMT_PUBLIC (no size prefix). */
export function marshalTpmtPublic(pub: TpmtPublic): Buffer {
  const w = new TpmWriter('TPMT_PUBLIC', 512);
  w.u16(pub.type).u16(pub.nameAlg).u32(pub.objectAttributes).sized(pub.authPolicy, MAX_DIGEST_SIZE, 'authPolicy');
  if (pub.type === TPM_ALG.RSA) {
    const p = pub.parameters;
    writeSym(w, p.symmetric);
    writeScheme(w, p.scheme);
    w.u16(p.keyBits).u32(p.exponent).sized(pub.unique, MAX_RSA_KEY_BYTES, 'unique');
  } else if (pub.type === TPM_ALG.ECC) {
    const p = pub.parameters;
    writeSym(w, p.symmetric);
    writeScheme(w, p.scheme);
    w.u16(p.curveId);
    if (p.kdf) w.u16(p.kdf.scheme).u16(p.kdf.hashAlg);
    else w.u16(TPM_ALG.NULL);
    w.sized(pub.unique.x, MAX_ECC_KEY_BYTES, 'unique.x').sized(pub.unique.y, MAX_ECC_KEY_BYTES, 'unique.y');
  } else {
    throw new TpmMarshalError('TPMT_PUBLIC', `type ${hex16((pub as { type: number }).type)} is not RSA or ECC`);
  }
  return w.toBuffer();
}

/** Marshals a TPM2B_PUBLIC (u16 size, then the TPMT_PUBLIC). */
export function marshalTpm2bPublic(pub: TpmtPublic): Buffer {
  return new TpmWriter('TPM2B_PUBLIC').sized(marshalTpmtPublic(pub)).toBuffer();
}

/** Accepts a parsed public area or TPM2B_PUBLIC bytes. */
export function toTpmtPublic(pub: TpmtPublic | Uint8Array): TpmtPublic {
  return pub instanceof Uint8Array ? parseTpm2bPublic(pub) : pub;
}

// ---- KeyObject conversion ----

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

function leftPad(b: Buffer, size: number, what: string): Buffer {
  const s = stripZeros(b);
  if (s.length > size) throw new TpmKeyError(`${what} is ${s.length} bytes, longer than ${size}`);
  return Buffer.concat([Buffer.alloc(size - s.length), s]);
}

/** The public key of an RSA or NIST-curve ECC public area. */
// Building a KeyObject costs more than checking a signature with it, and one
// parsed public area is asked for its key several times (AK checks, quote
// verification): keep it with the object.
const keyCache = new WeakMap<TpmtPublic, KeyObject>();

export function publicKeyFromTpmtPublic(pub: TpmtPublic): KeyObject {
  let key = keyCache.get(pub);
  if (!key) {
    key = buildPublicKey(pub);
    keyCache.set(pub, key);
  }
  return key;
}

function buildPublicKey(pub: TpmtPublic): KeyObject {
  if (pub.type === TPM_ALG.RSA) {
    const { keyBits, exponent } = pub.parameters;
    const n = stripZeros(pub.unique);
    if (keyBits < 1024 || keyBits % 8 !== 0) throw new TpmKeyError(`RSA keyBits ${keyBits}`);
    if (n.length !== keyBits / 8 || (n[0]! & 0x80) === 0) throw new TpmKeyError(`modulus is not ${keyBits} bits`);
    const e = Buffer.alloc(4);
    e.writeUInt32BE(exponent === 0 ? 65537 : exponent);
    try {
      return createPublicKey({ key: { kty: 'RSA', n: n.toString('base64url'), e: stripZeros(e).toString('base64url') }, format: 'jwk' });
    } catch (err) {
      throw new TpmKeyError(`RSA key refused by node:crypto (${(err as Error).message})`);
    }
  }
  const curve = curveInfo(pub.parameters.curveId);
  const x = leftPad(pub.unique.x, curve.size, 'x');
  const y = leftPad(pub.unique.y, curve.size, 'y');
  try {
    return createPublicKey({
      key: { kty: 'EC', crv: curve.jwk, x: x.toString('base64url'), y: y.toString('base64url') },
      format: 'jwk',
    });
  } catch (err) {
    throw new TpmKeyError(`point is not on ${curve.jwk} (${(err as Error).message})`);
  }
}

/** Everything of a public area but the key itself. */
export interface PublicTemplate {
  readonly nameAlg: number;
  readonly objectAttributes: number;
  readonly authPolicy?: Buffer;
  readonly symmetric?: TpmtSymDefObject | null;
  readonly scheme?: TpmtAsymScheme | null;
  /** ECC only. */
  readonly kdf?: TpmtKdfScheme | null;
}

/** Builds the public area a TPM would hold for `key` (an RSA or NIST P-256/384/521 public key). */
export function tpmtPublicFromPublicKey(key: KeyObject, template: PublicTemplate): TpmtPublic {
  const common = {
    nameAlg: template.nameAlg,
    objectAttributes: template.objectAttributes,
    authPolicy: template.authPolicy ?? Buffer.alloc(0),
  };
  const jwk = key.export({ format: 'jwk' });
  if (jwk.kty === 'RSA' && jwk.n && jwk.e) {
    const n = Buffer.from(jwk.n, 'base64url');
    const e = Buffer.from(jwk.e, 'base64url');
    if (e.length > 4) throw new TpmUnsupportedError('RSA exponent longer than 32 bits');
    const exponent = e.reduce((acc, b) => acc * 256 + b, 0);
    return {
      type: TPM_ALG.RSA,
      ...common,
      parameters: {
        symmetric: template.symmetric ?? null,
        scheme: template.scheme ?? null,
        keyBits: n.length * 8,
        exponent: exponent === 65537 ? 0 : exponent,
      },
      unique: n,
    };
  }
  if (jwk.kty === 'EC' && jwk.crv && jwk.x && jwk.y) {
    return {
      type: TPM_ALG.ECC,
      ...common,
      parameters: {
        symmetric: template.symmetric ?? null,
        scheme: template.scheme ?? null,
        curveId: curveFromJwkName(jwk.crv),
        kdf: template.kdf ?? null,
      },
      unique: { x: Buffer.from(jwk.x, 'base64url'), y: Buffer.from(jwk.y, 'base64url') },
    };
  }
  throw new TpmUnsupportedError(`key type ${key.asymmetricKeyType ?? key.type}`);
}
