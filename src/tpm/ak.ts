/**
 * What makes a public area an attestation key: a restricted signing key that
 * never left the TPM it was made in (so a quote it signs was made by that TPM
 * over TPM-generated data), with a strong key and a fixed signing scheme.
 */
import { TPM_ALG, TPMA_OBJECT, TPM_ECC_CURVE, hex16, type TpmaObjectName } from './constants.js';
import { AkPublicError } from './errors.js';
import { publicKeyFromTpmtPublic, toTpmtPublic, type TpmtPublic } from './public.js';

const REQUIRED: readonly TpmaObjectName[] = ['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'restricted', 'sign'];
const FORBIDDEN: readonly TpmaObjectName[] = ['decrypt'];
const STRONG_HASHES: ReadonlySet<number> = new Set([TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512]);
const AK_CURVES: ReadonlySet<number> = new Set([TPM_ECC_CURVE.NIST_P256, TPM_ECC_CURVE.NIST_P384]);
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 4096;

/** Checks an AK public area and returns it parsed; throws AkPublicError naming what is wrong. */
export function checkAkPublic(akPublic: TpmtPublic | Uint8Array): TpmtPublic {
  let pub: TpmtPublic;
  try {
    pub = toTpmtPublic(akPublic);
  } catch (e) {
    throw new AkPublicError('malformed', (e as Error).message);
  }
  for (const a of REQUIRED) {
    if (!(pub.objectAttributes & TPMA_OBJECT[a])) throw new AkPublicError('attribute-missing', `${a} is not set`, a);
  }
  for (const a of FORBIDDEN) {
    if (pub.objectAttributes & TPMA_OBJECT[a]) throw new AkPublicError('attribute-forbidden', `${a} is set`, a);
  }
  if (!STRONG_HASHES.has(pub.nameAlg)) throw new AkPublicError('name-alg', `nameAlg ${hex16(pub.nameAlg)} is not SHA-256/384/512`);
  if (pub.parameters.symmetric) throw new AkPublicError('symmetric', 'a signing key has no symmetric definition');

  const scheme = pub.parameters.scheme;
  if (pub.type === TPM_ALG.RSA) {
    const bits = pub.parameters.keyBits;
    if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) throw new AkPublicError('key-size', `RSA-${bits} (want ${MIN_RSA_BITS}..${MAX_RSA_BITS})`);
    if (!scheme || (scheme.scheme !== TPM_ALG.RSASSA && scheme.scheme !== TPM_ALG.RSAPSS)) {
      throw new AkPublicError('scheme', 'an RSA AK needs an RSASSA or RSAPSS scheme');
    }
  } else if (pub.type === TPM_ALG.ECC) {
    if (!AK_CURVES.has(pub.parameters.curveId)) throw new AkPublicError('curve', `curve ${hex16(pub.parameters.curveId)} is not NIST P-256/P-384`);
    if (!scheme || scheme.scheme !== TPM_ALG.ECDSA) throw new AkPublicError('scheme', 'an ECC AK needs an ECDSA scheme');
  } else {
    throw new AkPublicError('key-type', `type ${hex16((pub as { type: number }).type)}`);
  }
  if (!STRONG_HASHES.has(scheme.hashAlg)) throw new AkPublicError('scheme', `scheme hash ${hex16(scheme.hashAlg)} is not SHA-256/384/512`);

  try {
    publicKeyFromTpmtPublic(pub);
  } catch (e) {
    throw new AkPublicError('public-key', (e as Error).message);
  }
  return pub;
}
