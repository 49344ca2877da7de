import { describe, it, expect } from 'vitest';
import { checkAkPublic } from '../../src/tpm/ak.js';
import { AkPublicError } from '../../src/tpm/errors.js';
import { TPM_ALG, TPMA_OBJECT, TPM_ECC_CURVE } from '../../src/tpm/constants.js';
import { marshalTpm2bPublic, type TpmtPublic } from '../../src/tpm/public.js';
import { softwareAk } from './helpers.js';

function refusal(pub: TpmtPublic | Buffer): { reason: string; attribute?: string } {
  try {
    checkAkPublic(pub);
    return { reason: 'accepted' };
  } catch (e) {
    expect(e).toBeInstanceOf(AkPublicError);
    const err = e as AkPublicError;
    return err.attribute ? { reason: err.reason, attribute: err.attribute } : { reason: err.reason };
  }
}

describe('checkAkPublic', () => {
  it('accepts ECDSA P-256/P-384 and RSASSA/RSAPSS-2048 AKs, parsed or as TPM2B_PUBLIC', () => {
    for (const kind of ['ecdsa-p256', 'ecdsa-p384', 'rsassa', 'rsapss'] as const) {
      const ak = softwareAk(kind);
      expect(checkAkPublic(ak.pub)).toBe(ak.pub);
      expect(checkAkPublic(marshalTpm2bPublic(ak.pub))).toEqual(ak.pub);
    }
  });

  it.each(['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'restricted', 'sign'] as const)('names a missing %s', (attr) => {
    const { pub } = softwareAk('ecdsa-p256');
    expect(refusal({ ...pub, objectAttributes: pub.objectAttributes & ~TPMA_OBJECT[attr] })).toEqual({ reason: 'attribute-missing', attribute: attr });
  });

  it('refuses decrypt, weak keys, other curves, missing or wrong schemes, SHA-1, a symmetric definition', () => {
    const ecc = softwareAk('ecdsa-p256').pub;
    const rsa = softwareAk('rsassa').pub;
    if (ecc.type !== TPM_ALG.ECC || rsa.type !== TPM_ALG.RSA) throw new Error('unreachable');
    expect(refusal({ ...ecc, objectAttributes: ecc.objectAttributes | TPMA_OBJECT.decrypt })).toEqual({ reason: 'attribute-forbidden', attribute: 'decrypt' });
    expect(refusal({ ...rsa, parameters: { ...rsa.parameters, keyBits: 1024 } }).reason).toBe('key-size');
    expect(refusal({ ...ecc, parameters: { ...ecc.parameters, curveId: TPM_ECC_CURVE.NIST_P521 } }).reason).toBe('curve');
    expect(refusal({ ...ecc, parameters: { ...ecc.parameters, scheme: null } }).reason).toBe('scheme');
    expect(refusal({ ...ecc, parameters: { ...ecc.parameters, scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA1 } } }).reason).toBe('scheme');
    expect(refusal({ ...rsa, parameters: { ...rsa.parameters, scheme: { scheme: TPM_ALG.OAEP, hashAlg: TPM_ALG.SHA256 } } }).reason).toBe('scheme');
    expect(refusal({ ...ecc, nameAlg: TPM_ALG.SHA1 }).reason).toBe('name-alg');
    expect(refusal({ ...ecc, parameters: { ...ecc.parameters, symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB } } }).reason).toBe('symmetric');
    const y = Buffer.from(ecc.unique.y);
    y[0]! ^= 1;
    expect(refusal({ ...ecc, unique: { x: ecc.unique.x, y } }).reason).toBe('public-key');
    expect(refusal(Buffer.from([0, 2, 0, 1])).reason).toBe('malformed');
  });
});
