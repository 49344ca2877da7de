/**
 * The agent key and its proof of residence: TPM2_Certify by the node's AK
 * over the server's nonce says "the key with this name is loaded in the TPM
 * that holds this AK". With the key's attributes (fixedTPM, fixedParent,
 * sensitiveDataOrigin) that means its private part was made in that TPM and
 * can never leave it, so a certificate for it cannot be used off the machine.
 */
import { timingSafeEqual } from 'node:crypto';
import { TPM_ALG, TPMA_OBJECT, TPM_ECC_CURVE, TPM_GENERATED_VALUE, TPM_ST, hex16, type TpmaObjectName } from './constants.js';
import { AgentKeyPublicError, CertifyVerificationError } from './errors.js';
import { parseTpmsAttest, type TpmsAttestCertify } from './attest.js';
import { objectName } from './name.js';
import { parseTpmtPublic, publicKeyFromTpmtPublic, type TpmtPublic } from './public.js';

/** TPMT_PUBLIC bytes (as the TPM and the Node API carry them, no size prefix) or parsed. */
const tpmt = (p: TpmtPublic | Uint8Array): TpmtPublic => (p instanceof Uint8Array ? parseTpmtPublic(p) : p);
import { parseTpmtSignature, verifyTpmSignature, type TpmtSignature } from './signature.js';

const REQUIRED: readonly TpmaObjectName[] = ['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'sign'];
// restricted: a restricted key cannot sign the TLS exporter or a CSR; decrypt: one purpose per key.
const FORBIDDEN: readonly TpmaObjectName[] = ['decrypt', 'restricted'];

/** Checks an agent key public area (ECDSA-SHA256 on P-256, never exportable); returns it parsed. */
export function checkAgentKeyPublic(keyPublic: TpmtPublic | Uint8Array): TpmtPublic {
  let pub: TpmtPublic;
  try {
    pub = tpmt(keyPublic);
  } catch (e) {
    throw new AgentKeyPublicError('malformed', (e as Error).message);
  }
  for (const a of REQUIRED) {
    if (!(pub.objectAttributes & TPMA_OBJECT[a])) throw new AgentKeyPublicError('attribute-missing', `${a} is not set`);
  }
  for (const a of FORBIDDEN) {
    if (pub.objectAttributes & TPMA_OBJECT[a]) throw new AgentKeyPublicError('attribute-forbidden', `${a} is set`);
  }
  if (pub.nameAlg !== TPM_ALG.SHA256) throw new AgentKeyPublicError('name-alg', `nameAlg ${hex16(pub.nameAlg)} is not SHA-256`);
  if (pub.type !== TPM_ALG.ECC) throw new AgentKeyPublicError('key-type', `type ${hex16(pub.type)} is not ECC`);
  if (pub.parameters.curveId !== TPM_ECC_CURVE.NIST_P256) throw new AgentKeyPublicError('curve', `curve ${hex16(pub.parameters.curveId)} is not NIST P-256`);
  const s = pub.parameters.scheme;
  if (!s || s.scheme !== TPM_ALG.ECDSA || s.hashAlg !== TPM_ALG.SHA256) throw new AgentKeyPublicError('scheme', 'the agent key must have the ECDSA-SHA256 scheme');
  try {
    publicKeyFromTpmtPublic(pub);
  } catch (e) {
    throw new AgentKeyPublicError('public-key', (e as Error).message);
  }
  return pub;
}

export interface VerifyCertifyInput {
  /** The AK that signed (already checked to be an AK of the attesting TPM). */
  readonly akPublic: TpmtPublic | Uint8Array;
  /** The TPMS_ATTEST bytes as signed. */
  readonly attest: Uint8Array;
  readonly signature: TpmtSignature | Uint8Array;
  readonly nonce: Uint8Array;
  /** The public area of the key the attest must name. */
  readonly objectPublic: TpmtPublic | Uint8Array;
}

function fail(reason: CertifyVerificationError['reason'], detail: string): never {
  throw new CertifyVerificationError(reason, detail);
}

/** Verifies a TPM2_Certify of `objectPublic` by the AK over `nonce`; CertifyVerificationError names what failed. */
export function verifyCertify(input: VerifyCertifyInput): TpmsAttestCertify {
  let ak: TpmtPublic;
  let sig: TpmtSignature;
  let name: Buffer;
  try {
    ak = tpmt(input.akPublic);
    sig = input.signature instanceof Uint8Array ? parseTpmtSignature(input.signature) : input.signature;
    name = objectName(tpmt(input.objectPublic));
  } catch (e) {
    return fail('malformed', (e as Error).message);
  }
  const s = ak.parameters.scheme;
  if (sig.sigAlg === TPM_ALG.NULL || !s || s.scheme !== sig.sigAlg || !('hashAlg' in sig) || s.hashAlg !== sig.hashAlg) {
    fail('scheme', "the signature is not made with the AK's scheme");
  }
  let valid: boolean;
  try {
    valid = verifyTpmSignature(publicKeyFromTpmtPublic(ak), input.attest, sig);
  } catch (e) {
    return fail('scheme', (e as Error).message);
  }
  if (!valid) fail('signature', 'the certification does not verify with the AK');
  let attest;
  try {
    attest = parseTpmsAttest(input.attest);
  } catch (e) {
    return fail('malformed', (e as Error).message);
  }
  if (attest.magic !== TPM_GENERATED_VALUE) fail('magic', 'the certification was not made by a TPM');
  if (attest.type !== TPM_ST.ATTEST_CERTIFY) fail('type', `attestation type ${hex16(attest.type)} is not TPM_ST_ATTEST_CERTIFY`);
  if (input.nonce.length === 0 || attest.extraData.length !== input.nonce.length || !timingSafeEqual(attest.extraData, input.nonce)) {
    fail('nonce', 'extraData is not the nonce issued');
  }
  const certified = attest.attested.name;
  if (certified.length !== name.length || !timingSafeEqual(certified, name)) fail('name', 'the certification names another key than the agent key');
  return attest;
}
