/** Software AKs and quotes for unit tests of the verifier (the swtpm tests use real ones). */
import { createHash, generateKeyPairSync, randomBytes, sign, constants, type KeyObject } from 'node:crypto';
import { TPM_ALG, TPMA_OBJECT, TPM_GENERATED_VALUE, TPM_ST, nodeHashName } from '../../src/tpm/constants.js';
import { marshalTpmsAttest, type TpmsAttestQuote, type TpmsClockInfo } from '../../src/tpm/attest.js';
import { tpmtPublicFromPublicKey, type TpmtPublic } from '../../src/tpm/public.js';
import { selectedPcrs, type TpmlPcrSelection } from '../../src/tpm/pcr-selection.js';
import type { TpmtSignature } from '../../src/tpm/signature.js';

export const AK_ATTRS = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin
  | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

export type AkKind = 'ecdsa-p256' | 'ecdsa-p384' | 'rsassa' | 'rsapss';

export interface SoftAk {
  readonly pub: TpmtPublic;
  readonly priv: KeyObject;
  readonly kind: AkKind;
  readonly hashAlg: number;
}

export function softwareAk(kind: AkKind, hashAlg: number = TPM_ALG.SHA256): SoftAk {
  const pair = kind.startsWith('ecdsa')
    ? generateKeyPairSync('ec', { namedCurve: kind === 'ecdsa-p256' ? 'prime256v1' : 'secp384r1' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const scheme = kind.startsWith('ecdsa') ? TPM_ALG.ECDSA : kind === 'rsassa' ? TPM_ALG.RSASSA : TPM_ALG.RSAPSS;
  const pub = tpmtPublicFromPublicKey(pair.publicKey, {
    nameAlg: TPM_ALG.SHA256, objectAttributes: AK_ATTRS, scheme: { scheme, hashAlg },
  });
  return { pub, priv: pair.privateKey, kind, hashAlg };
}

/** Signs like a TPM: the scheme's hash over the attest bytes; ECDSA as r and s. */
export function signLikeTpm(ak: SoftAk, message: Buffer): TpmtSignature {
  const hash = nodeHashName(ak.hashAlg);
  if (ak.kind === 'rsassa') return { sigAlg: TPM_ALG.RSASSA, hashAlg: ak.hashAlg, sig: sign(hash, message, ak.priv) };
  if (ak.kind === 'rsapss') {
    const sig = sign(hash, message, { key: ak.priv, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    return { sigAlg: TPM_ALG.RSAPSS, hashAlg: ak.hashAlg, sig };
  }
  const raw = sign(hash, message, { key: ak.priv, dsaEncoding: 'ieee-p1363' });
  const half = raw.length / 2;
  const r = raw.subarray(0, half);
  const s = raw.subarray(half);
  return { sigAlg: TPM_ALG.ECDSA, hashAlg: ak.hashAlg, r: Buffer.from(r), s: Buffer.from(s) };
}

export function pcrValuesFor(selection: TpmlPcrSelection): Buffer[] {
  return selectedPcrs(selection).map(({ hashAlg }) => randomBytes(hashAlg === TPM_ALG.SHA1 ? 20 : hashAlg === TPM_ALG.SHA384 ? 48 : 32));
}

export interface QuoteFixture {
  attestStruct: TpmsAttestQuote;
  attest: Buffer;
  signature: TpmtSignature;
}

export function makeQuote(
  ak: SoftAk,
  o: { nonce: Buffer; selection: TpmlPcrSelection; pcrValues: Buffer[]; clock?: Partial<TpmsClockInfo>; type?: number; magic?: number },
): QuoteFixture {
  const h = createHash(nodeHashName(ak.hashAlg));
  for (const v of o.pcrValues) h.update(v);
  const attestStruct: TpmsAttestQuote = {
    magic: o.magic ?? TPM_GENERATED_VALUE,
    type: TPM_ST.ATTEST_QUOTE,
    qualifiedSigner: Buffer.concat([Buffer.from([0, 0x0b]), randomBytes(32)]),
    extraData: o.nonce,
    clockInfo: { clock: 1000n, resetCount: 3, restartCount: 1, safe: true, ...o.clock },
    firmwareVersion: 0x2019102300163636n,
    attested: { pcrSelect: o.selection, pcrDigest: h.digest() },
  };
  let attest = marshalTpmsAttest(attestStruct);
  if (o.type !== undefined) attest.writeUInt16BE(o.type, 4);
  return { attestStruct, attest, signature: signLikeTpm(ak, attest) };
}
