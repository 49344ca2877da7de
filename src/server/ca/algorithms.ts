/**
 * Signature algorithms as X.509 names them, for the algorithms a Signer can
 * use, and the conversion of a Signer's output into what X.509 carries
 * (ECDSA: DER ECDSA-Sig-Value rather than the P1363 r||s of JWS).
 */
import { p1363ToDer } from '../../hsm/ecdsa-format.js';
import type { SignatureAlgorithm } from '../../spiffe/signer.js';
import { oid, seq, tlv, smallInteger, TAG } from './der.js';

export const OID = {
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  sha384WithRsa: '1.2.840.113549.1.1.12',
  sha512WithRsa: '1.2.840.113549.1.1.13',
  rsassaPss: '1.2.840.113549.1.1.10',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecPublicKey: '1.2.840.10045.2.1',
  mgf1: '1.2.840.113549.1.1.8',
  sha256: '2.16.840.1.101.3.4.2.1',
  sha384: '2.16.840.1.101.3.4.2.2',
  sha512: '2.16.840.1.101.3.4.2.3',
  prime256v1: '1.2.840.10045.3.1.7',
  secp384r1: '1.3.132.0.34',
} as const;

const NULL = Buffer.from([TAG.NULL, 0]);

function pssParams(hashOid: string, saltLength: number): Buffer {
  const hashAlg = seq(oid(hashOid), NULL);
  return seq(
    tlv(0xa0, hashAlg),
    tlv(0xa1, seq(oid(OID.mgf1), hashAlg)),
    tlv(0xa2, smallInteger(saltLength)),
  );
}

/** The DER AlgorithmIdentifier for signatures made with `alg`. */
export function signatureAlgorithmIdentifier(alg: SignatureAlgorithm): Buffer {
  switch (alg) {
    case 'ES256':
      return seq(oid(OID.ecdsaWithSha256));
    case 'ES384':
      return seq(oid(OID.ecdsaWithSha384));
    case 'RS256':
      return seq(oid(OID.sha256WithRsa), NULL);
    case 'RS384':
      return seq(oid(OID.sha384WithRsa), NULL);
    case 'PS256':
      return seq(oid(OID.rsassaPss), pssParams(OID.sha256, 32));
    case 'PS384':
      return seq(oid(OID.rsassaPss), pssParams(OID.sha384, 48));
  }
}


/** What goes into the X.509 signature BIT STRING for a Signer's output. */
export function x509SignatureValue(alg: SignatureAlgorithm, raw: Buffer): Buffer {
  return alg === 'ES256' || alg === 'ES384' ? p1363ToDer(raw) : raw;
}

/** The Signer algorithm that fits a public key (RSA signs PKCS#1 v1.5 unless told otherwise). */
export function defaultAlgorithmFor(key: import('node:crypto').KeyObject): SignatureAlgorithm {
  const type = key.asymmetricKeyType;
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return 'ES256';
    if (curve === 'secp384r1') return 'ES384';
    throw new RangeError(`unsupported EC curve ${String(curve)}`);
  }
  if (type === 'rsa') return 'RS256';
  if (type === 'rsa-pss') return 'PS256';
  throw new RangeError(`unsupported key type ${String(type)}`);
}
