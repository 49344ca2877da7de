/**
 * PKCS#10 CSRs from untrusted callers. Only two things are taken from a CSR:
 * the public key, and the proof (its self-signature) that the caller holds
 * the private half. Subject and SANs are ignored: the identity comes from the
 * registration entry, never from what the caller asks for.
 *
 * The CSR is walked with a strict DER reader rather than a full typed parse
 * (@peculiar/asn1-csr): that parse cost ~270 µs per CSR here, more than the
 * signature check, and would only validate the parts we ignore. RSASSA-PSS
 * parameters, the one nested structure we read, go through @peculiar/asn1-rsa.
 */
import { createPublicKey, createHash, verify, constants, type KeyObject } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { RsaSaPssParams } from '@peculiar/asn1-rsa';
import { AlgorithmIdentifier } from '@peculiar/asn1-x509';
import { readTlv, children, slice, content, oid, TAG, DerError } from './der.js';
import { OID } from './algorithms.js';
import { CsrError } from './errors.js';

/** CSRs are a few hundred bytes; anything this big is not one we want to parse. */
export const MAX_CSR_BYTES = 16 * 1024;
const MIN_RSA_BITS = 2048;
/** Bounds the cost of verifying an attacker's RSA signature. */
const MAX_RSA_BITS = 8192;

export type CsrKeyType = 'ec-p256' | 'ec-p384' | 'rsa';

const parsedBrand: unique symbol = Symbol('ParsedCsr');

/** A CSR whose self-signature verified. Only `parseCsr` makes these. */
export interface ParsedCsr {
  readonly [parsedBrand]: true;
  readonly publicKey: KeyObject;
  /** Canonical SubjectPublicKeyInfo DER (re-exported by Node, not the caller's bytes). */
  readonly spkiDer: Buffer;
  readonly keyType: CsrKeyType;
  /** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING contents. */
  readonly subjectKeyId: Buffer;
  /** The CSR signature algorithm, for logs. */
  readonly signatureAlgorithm: string;
}

export function isParsedCsr(x: unknown): x is ParsedCsr {
  return typeof x === 'object' && x !== null && (x as { [parsedBrand]?: unknown })[parsedBrand] === true;
}

const PEM_RE = /^-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END (NEW )?CERTIFICATE REQUEST-----\s*$/;

function pemToDer(text: string): Buffer {
  // Base64 is 4/3 of the DER plus line breaks; refuse before decoding anything big.
  if (text.length > MAX_CSR_BYTES * 2) throw new CsrError('too-large', `PEM is ${text.length} characters, limit ${MAX_CSR_BYTES * 2}`);
  const m = PEM_RE.exec(text.trim() + '\n');
  if (!m) throw new CsrError('bad-encoding', 'not a PEM "CERTIFICATE REQUEST" block');
  const b64 = m[2]!.replace(/[\r\n]/g, '');
  if (b64.length % 4 !== 0 || /=[^=]/.test(b64)) throw new CsrError('bad-encoding', 'malformed base64 in PEM');
  return Buffer.from(b64, 'base64');
}

function toDer(input: Uint8Array | string): Buffer {
  if (typeof input === 'string') return pemToDer(input);
  if (!(input instanceof Uint8Array)) throw new CsrError('bad-encoding', 'CSR must be DER bytes or a PEM string');
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  // "-----BEGIN": PEM handed over as bytes.
  if (buf.length >= 10 && buf.subarray(0, 10).toString('latin1') === '-----BEGIN') {
    if (buf.length > MAX_CSR_BYTES * 2) throw new CsrError('too-large', `PEM is ${buf.length} bytes`);
    return pemToDer(buf.toString('latin1'));
  }
  return buf;
}

function hashOf(alg: string): 'sha256' | 'sha384' | 'sha512' | undefined {
  switch (alg) {
    case OID.sha256:
      return 'sha256';
    case OID.sha384:
      return 'sha384';
    case OID.sha512:
      return 'sha512';
    default:
      return undefined;
  }
}

/** DER OID encodings of the signature algorithms we accept, for a byte comparison. */
const SIG_OIDS = new Map<string, string>(
  [OID.ecdsaWithSha256, OID.ecdsaWithSha384, OID.sha256WithRsa, OID.sha384WithRsa, OID.sha512WithRsa, OID.rsassaPss].map((o) => [oid(o).toString('hex'), o]),
);

/** Parameters must be absent or NULL (RFC 5758 says absent for ECDSA; NULL is common for RSA). */
function paramsAbsentOrNull(params: Buffer | undefined): boolean {
  return params === undefined || (params.length === 2 && params[0] === TAG.NULL && params[1] === 0);
}

interface VerifyPlan {
  readonly name: string;
  readonly hash: 'sha256' | 'sha384' | 'sha512';
  readonly family: 'ec' | 'rsa';
  readonly pssSaltLength?: number;
}

/**
 * What the AlgorithmIdentifier (`oidDer`, full OID TLV; `params`, the raw
 * parameters TLV if any) asks for. Only RSASSA-PSS parameters need a real
 * ASN.1 parse, which @peculiar/asn1-rsa does.
 */
function signaturePlan(oidDer: Buffer, params: Buffer | undefined): VerifyPlan {
  const bad = (why: string): CsrError => new CsrError('unsupported-signature-algorithm', why);
  const alg = SIG_OIDS.get(oidDer.toString('hex'));
  switch (alg) {
    case OID.ecdsaWithSha256:
    case OID.ecdsaWithSha384:
      if (!paramsAbsentOrNull(params)) throw bad('ECDSA algorithm identifier has parameters');
      return alg === OID.ecdsaWithSha256
        ? { name: 'ecdsa-with-SHA256', hash: 'sha256', family: 'ec' }
        : { name: 'ecdsa-with-SHA384', hash: 'sha384', family: 'ec' };
    case OID.sha256WithRsa:
    case OID.sha384WithRsa:
    case OID.sha512WithRsa: {
      if (!paramsAbsentOrNull(params)) throw bad('RSA PKCS#1 v1.5 algorithm identifier has non-NULL parameters');
      const hash = alg === OID.sha256WithRsa ? 'sha256' : alg === OID.sha384WithRsa ? 'sha384' : 'sha512';
      return { name: `${hash}WithRSAEncryption`, hash, family: 'rsa' };
    }
    case OID.rsassaPss: {
      if (!params) throw bad('RSASSA-PSS without parameters (SHA-1 defaults are not accepted)');
      let p: RsaSaPssParams;
      try {
        p = AsnConvert.parse(params, RsaSaPssParams);
      } catch {
        throw bad('RSASSA-PSS parameters do not parse');
      }
      const hash = hashOf(p.hashAlgorithm.algorithm);
      if (!hash) throw bad(`RSASSA-PSS hash ${p.hashAlgorithm.algorithm} is not SHA-256/384/512`);
      if (p.maskGenAlgorithm.algorithm !== OID.mgf1) throw bad('RSASSA-PSS mask generation is not MGF1');
      let mgfHash: string | undefined;
      try {
        const mgfParams = p.maskGenAlgorithm.parameters;
        mgfHash = mgfParams ? hashOf(AsnConvert.parse(mgfParams as ArrayBuffer, AlgorithmIdentifier).algorithm) : undefined;
      } catch {
        mgfHash = undefined;
      }
      if (mgfHash !== hash) throw bad('RSASSA-PSS MGF1 hash differs from the message hash');
      if (p.trailerField !== 1) throw bad('RSASSA-PSS trailer field is not 1');
      if (!Number.isInteger(p.saltLength) || p.saltLength < 0 || p.saltLength > 512) throw bad('RSASSA-PSS salt length out of range');
      return { name: `RSASSA-PSS-${hash}`, hash, family: 'rsa', pssSaltLength: p.saltLength };
    }
    default:
      throw bad('signature algorithm is not ECDSA-SHA256/384 or RSA PKCS#1 v1.5/PSS');
  }
}

/** The fixed SPKI prefixes of named-curve EC keys with an uncompressed point. */
const EC_SPKI = [
  { type: 'ec-p256' as const, crv: 'P-256', size: 32, prefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex') },
  { type: 'ec-p384' as const, crv: 'P-384', size: 48, prefix: Buffer.from('3076301006072a8648ce3d020106052b81040022036200', 'hex') },
];

/**
 * EC keys in the canonical form (named curve, uncompressed point) are the
 * common case; building them from the coordinates is about twice as fast as
 * OpenSSL's generic SPKI decoder, and still checks the point is on the curve.
 */
function fastEcKey(spki: Buffer): { key: KeyObject; type: 'ec-p256' | 'ec-p384' } | undefined {
  for (const c of EC_SPKI) {
    if (spki.length !== c.prefix.length + 1 + 2 * c.size || !spki.subarray(0, c.prefix.length).equals(c.prefix) || spki[c.prefix.length] !== 0x04) continue;
    const x = spki.subarray(c.prefix.length + 1, c.prefix.length + 1 + c.size).toString('base64url');
    const y = spki.subarray(c.prefix.length + 1 + c.size).toString('base64url');
    try {
      return { key: createPublicKey({ key: { kty: 'EC', crv: c.crv, x, y }, format: 'jwk' }), type: c.type };
    } catch {
      throw new CsrError('unsupported-key', 'the EC point is not on the curve');
    }
  }
  return undefined;
}

function keyTypeOf(key: KeyObject): CsrKeyType {
  const t = key.asymmetricKeyType;
  if (t === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return 'ec-p256';
    if (curve === 'secp384r1') return 'ec-p384';
    throw new CsrError('unsupported-key', `EC curve ${String(curve)} is not P-256 or P-384`);
  }
  if (t === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw new CsrError('weak-key', `RSA key of ${bits} bits, at least ${MIN_RSA_BITS} required`);
    if (bits > MAX_RSA_BITS) throw new CsrError('unsupported-key', `RSA key of ${bits} bits, at most ${MAX_RSA_BITS} accepted`);
    return 'rsa';
  }
  throw new CsrError('unsupported-key', `key type ${String(t)} is not EC P-256/P-384 or RSA`);
}

/** The SKI of a SubjectPublicKeyInfo (SHA-1 of the key bits, RFC 5280 method 1). */
export function subjectKeyIdOf(spkiDer: Buffer): Buffer {
  const outer = readTlv(spkiDer, 0);
  const [, bits] = children(spkiDer, outer);
  if (!bits || bits.tag !== TAG.BIT_STRING) throw new DerError('SPKI has no BIT STRING');
  return createHash('sha1').update(spkiDer.subarray(bits.contentStart + 1, bits.end)).digest();
}

/** Re-encode through Node so the certificate carries a canonical, uncompressed SPKI. */
function canonicalSpki(key: KeyObject): Buffer {
  const der = key.export({ format: 'der', type: 'spki' });
  if (key.asymmetricKeyType !== 'ec') return der;
  const bits = children(der, readTlv(der, 0))[1]!;
  if (der[bits.contentStart + 1] === 0x04) return der;
  // Compressed point in the CSR: a JWK round trip yields the uncompressed form.
  return createPublicKey({ key: key.export({ format: 'jwk' }), format: 'jwk' }).export({ format: 'der', type: 'spki' });
}

/**
 * Parses and verifies a CSR (DER bytes or PEM). Throws `CsrError` for any
 * problem and nothing else.
 */
export function parseCsr(input: Uint8Array | string): ParsedCsr {
  const der = toDer(input);
  if (der.length > MAX_CSR_BYTES) throw new CsrError('too-large', `CSR is ${der.length} bytes, limit ${MAX_CSR_BYTES}`);
  try {
    return parseDer(der);
  } catch (e) {
    if (e instanceof CsrError) throw e;
    if (e instanceof DerError) throw new CsrError('bad-encoding', e.message);
    // Whatever the ASN.1 library or OpenSSL say about garbage: still the caller's bad CSR.
    throw new CsrError('bad-structure', e instanceof Error ? e.message.slice(0, 200) : 'unparseable');
  }
}

function parseDer(der: Buffer): ParsedCsr {
  const outer = readTlv(der, 0);
  if (outer.tag !== TAG.SEQUENCE) throw new CsrError('bad-structure', 'CSR is not a SEQUENCE');
  if (outer.end !== der.length) throw new CsrError('bad-encoding', 'trailing bytes after the CSR');
  const parts = children(der, outer);
  const [infoTlv, algTlv, sigTlv] = parts;
  if (parts.length !== 3 || !infoTlv || !algTlv || !sigTlv) throw new CsrError('bad-structure', 'CSR is not {info, algorithm, signature}');
  if (infoTlv.tag !== TAG.SEQUENCE || algTlv.tag !== TAG.SEQUENCE || sigTlv.tag !== TAG.BIT_STRING) {
    throw new CsrError('bad-structure', 'CSR fields have the wrong types');
  }
  const infoFields = children(der, infoTlv);
  const [versionTlv, subjectTlv, spkiTlv, ...rest] = infoFields;
  if (!versionTlv || !subjectTlv || !spkiTlv || versionTlv.tag !== TAG.INTEGER || subjectTlv.tag !== TAG.SEQUENCE || spkiTlv.tag !== TAG.SEQUENCE) {
    throw new CsrError('bad-structure', 'certificationRequestInfo is not {version, subject, subjectPKInfo, …}');
  }
  if (rest.length > 1 || (rest[0] && rest[0].tag !== 0xa0)) throw new CsrError('bad-structure', 'unexpected fields after subjectPKInfo');
  const version = content(der, versionTlv);
  if (version.length !== 1 || version[0] !== 0) throw new CsrError('bad-structure', 'CSR version is not v1 (0)');

  const algParts = children(der, algTlv);
  const [algOid, algParams] = algParts;
  if (!algOid || algOid.tag !== TAG.OID || algParts.length > 2) throw new CsrError('bad-structure', 'signatureAlgorithm is not {OID, parameters}');
  const plan = signaturePlan(slice(der, algOid), algParams ? slice(der, algParams) : undefined);

  const sigContent = content(der, sigTlv);
  if (sigContent.length < 2 || sigContent[0] !== 0) throw new CsrError('bad-structure', 'signature BIT STRING has unused bits');

  const spkiIn = slice(der, spkiTlv);
  let publicKey: KeyObject;
  let keyType: CsrKeyType;
  let spkiDer: Buffer;
  const ec = fastEcKey(spkiIn);
  if (ec) {
    publicKey = ec.key;
    keyType = ec.type;
    // Byte for byte the canonical encoding already (fixed prefix, uncompressed point).
    spkiDer = Buffer.from(spkiIn);
  } else {
    try {
      publicKey = createPublicKey({ key: spkiIn, format: 'der', type: 'spki' });
    } catch {
      throw new CsrError('unsupported-key', 'subjectPKInfo is not a public key Node can read');
    }
    keyType = keyTypeOf(publicKey);
    spkiDer = canonicalSpki(publicKey);
  }
  if ((plan.family === 'ec') !== keyType.startsWith('ec')) {
    throw new CsrError('unsupported-signature-algorithm', `${plan.name} does not fit a ${keyType} key`);
  }

  const signed = slice(der, infoTlv);
  const signature = sigContent.subarray(1);
  let ok: boolean;
  try {
    ok =
      plan.pssSaltLength === undefined
        ? verify(plan.hash, signed, publicKey, signature)
        : verify(plan.hash, signed, { key: publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: plan.pssSaltLength }, signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new CsrError('bad-signature', `the ${plan.name} self-signature does not verify with the CSR's key`);

  return {
    [parsedBrand]: true,
    publicKey,
    spkiDer,
    keyType,
    subjectKeyId: subjectKeyIdOf(spkiDer),
    signatureAlgorithm: plan.name,
  };
}
