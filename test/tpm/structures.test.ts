import { createHash } from 'node:crypto';
import { describe, it, expect } from 'vitest';
import { parseTpmsAttest, marshalTpmsAttest } from '../../src/tpm/attest.js';
import { parseTpm2bPublic, marshalTpm2bPublic, publicKeyFromTpmtPublic, tpmtPublicFromPublicKey } from '../../src/tpm/public.js';
import { parseTpmtSignature } from '../../src/tpm/signature.js';
import { marshalPcrSelection, parsePcrSelection, pcrSelection, selectedPcrs, pcrSelectionEquals } from '../../src/tpm/pcr-selection.js';
import { objectName, isDigestName, nameAlgOf } from '../../src/tpm/name.js';
import { verifyQuote } from '../../src/tpm/quote.js';
import { TPM_ALG, TPM_ECC_CURVE, TPM_ST } from '../../src/tpm/constants.js';
import { TpmKeyError, TpmMarshalError, TpmParseError } from '../../src/tpm/errors.js';

// Captured from swtpm 0.7.1 with tpm2-tools 5.4 on this project's machine kind:
// tpm2_createak -C 0x81010001 -G ecc -g sha256 -s ecdsa; tpm2_pcrextend 3:sha256=ab…ab;
// tpm2_quote -l sha256:0,…,7 -q 0011223344556677 -g sha256
const AK_PUB = '00580023000b00050072000000100018000b0003001000201893f7d7bf29a75404c30666b73ec33f3354600cad1a012138499cbf88808dec00206e8e6ade714b095442b03332091a5aed4d5201bace9970856044ea9ee971c7a6';
const AK_NAME = '000b2671dbcd9eb74a8c98c70bcd35b89ebf5bb732ef92a489130322854e9b8396cb';
const ATTEST = 'ff54434780180022000b3f31c99edfa6c3b9b41ada1f3d258a0e1c1809be72a6ce41de6cf78ca68d6aec000800112233445566770000000000008a70000000020000000001201910230016363600000001000b03ff0000002031baed2a2d5855179d4c6546d980463e1de8aeb506e4a0728a675dbfc6f1f09b';
const SIG = '0018000b002060ffa34d5c4ba5ceb2545b70f9e131ad5a342afcec18edad5acdfc1f90cfed10002026420626033e156d02b686e9e0201a83974d4622fcab939d9e65f189b7cfe1e7';
const hex = (s: string): Buffer => Buffer.from(s, 'hex');

describe('a real swtpm quote', () => {
  it('parses field by field as tpm2_print shows it', () => {
    const a = parseTpmsAttest(hex(ATTEST));
    expect(hex(ATTEST)).toHaveLength(121);
    expect(a.type).toBe(TPM_ST.ATTEST_QUOTE);
    expect(a.qualifiedSigner.toString('hex')).toBe('000b3f31c99edfa6c3b9b41ada1f3d258a0e1c1809be72a6ce41de6cf78ca68d6aec');
    expect(a.extraData.toString('hex')).toBe('0011223344556677');
    expect(a.clockInfo).toEqual({ clock: 35440n, resetCount: 2, restartCount: 0, safe: true });
    expect(a.firmwareVersion).toBe(0x2019102300163636n);
    if (a.type !== TPM_ST.ATTEST_QUOTE) throw new Error('unreachable');
    expect(a.attested.pcrSelect).toEqual([{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }]);
    expect(marshalTpmsAttest(a).toString('hex')).toBe(ATTEST);
  });

  it('verifies with its AK, the nonce and the PCR values', () => {
    const ak = parseTpm2bPublic(hex(AK_PUB));
    expect(objectName(ak).toString('hex')).toBe(AK_NAME);
    const sig = parseTpmtSignature(hex(SIG));
    expect(sig).toMatchObject({ sigAlg: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 });
    const pcrValues = Array.from({ length: 8 }, () => Buffer.alloc(32));
    pcrValues[3] = createHash('sha256').update(Buffer.alloc(32)).update(Buffer.alloc(32, 0xab)).digest();
    const v = verifyQuote({
      akPublic: hex(AK_PUB), attest: hex(ATTEST), signature: hex(SIG), nonce: hex('0011223344556677'),
      expectedSelection: pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [7, 6, 5, 4, 3, 2, 1, 0] }), pcrValues,
    });
    expect(v.clockInfo.resetCount).toBe(2);
  });
});

describe('TPM2B_PUBLIC', () => {
  it('gives TpmParseError with the structure path and offset', () => {
    const bad = hex(AK_PUB);
    bad.writeUInt16BE(0x0099, 4); // nameAlg
    expect(() => parseTpm2bPublic(bad)).toThrow(TpmParseError);
    try {
      parseTpm2bPublic(bad);
    } catch (e) {
      expect((e as TpmParseError).structure).toBe('TPM2B_PUBLIC.TPMT_PUBLIC.nameAlg');
      expect((e as TpmParseError).offset).toBe(4);
    }
    // the size prefix must match the public area exactly
    const longer = Buffer.concat([hex(AK_PUB), Buffer.alloc(1)]);
    longer.writeUInt16BE(0x59, 0);
    expect(() => parseTpm2bPublic(longer)).toThrow(/1 trailing byte/);
  });

  it('round-trips a node:crypto key through a public area (RSA exponent 0 = 65537)', async () => {
    const { generateKeyPairSync } = await import('node:crypto');
    for (const key of [
      generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey,
      generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey,
      generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey,
      generateKeyPairSync('ec', { namedCurve: 'secp521r1' }).publicKey,
    ]) {
      const pub = tpmtPublicFromPublicKey(key, { nameAlg: TPM_ALG.SHA256, objectAttributes: 0 });
      if (pub.type === TPM_ALG.RSA) expect(pub.parameters.exponent).toBe(0);
      const back = publicKeyFromTpmtPublic(parseTpm2bPublic(marshalTpm2bPublic(pub)));
      expect(back.equals(key)).toBe(true);
    }
  });

  it('refuses a point off the curve, an unknown curve and a short modulus with TpmKeyError', () => {
    const ak = parseTpm2bPublic(hex(AK_PUB));
    if (ak.type !== TPM_ALG.ECC) throw new Error('unreachable');
    const y = Buffer.from(ak.unique.y);
    y[31]! ^= 1;
    expect(() => publicKeyFromTpmtPublic({ ...ak, unique: { x: ak.unique.x, y } })).toThrow(TpmKeyError);
    expect(() => publicKeyFromTpmtPublic({ ...ak, parameters: { ...ak.parameters, curveId: TPM_ECC_CURVE.BN_P256 } })).toThrow(/unsupported ECC curve/);
    expect(() => publicKeyFromTpmtPublic({
      type: TPM_ALG.RSA, nameAlg: TPM_ALG.SHA256, objectAttributes: 0, authPolicy: Buffer.alloc(0),
      parameters: { symmetric: null, scheme: null, keyBits: 2048, exponent: 0 }, unique: Buffer.alloc(255, 0xff),
    })).toThrow(TpmKeyError);
  });
});

describe('TPML_PCR_SELECTION', () => {
  it('marshals PCR n at byte n>>3 bit n&7, at least 3 bytes, in bank order', () => {
    const sel = pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [0, 7, 9] }, { hashAlg: TPM_ALG.SHA1, pcrs: [23] });
    expect(marshalPcrSelection(sel).toString('hex')).toBe('00000002' + '000b03810200' + '000403000080');
    expect(parsePcrSelection(hex('00000001000b0401000001'))).toEqual([{ hashAlg: TPM_ALG.SHA256, pcrs: [0, 24] }]);
    expect(selectedPcrs(sel)).toEqual([
      { hashAlg: TPM_ALG.SHA256, index: 0 }, { hashAlg: TPM_ALG.SHA256, index: 7 }, { hashAlg: TPM_ALG.SHA256, index: 9 },
      { hashAlg: TPM_ALG.SHA1, index: 23 },
    ]);
    // a sizeofSelect of 4 with an empty 4th byte is the same selection
    expect(pcrSelectionEquals(parsePcrSelection(hex('00000001000b04ff000000')), pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }))).toBe(true);
    expect(pcrSelectionEquals(sel, [...sel].reverse())).toBe(false);
    expect(() => marshalPcrSelection([{ hashAlg: TPM_ALG.SHA256, pcrs: [32] }])).toThrow(TpmMarshalError);
  });
});

describe('names', () => {
  it('recognises nameAlg || digest', () => {
    expect(isDigestName(hex(AK_NAME))).toBe(true);
    expect(nameAlgOf(hex(AK_NAME))).toBe(TPM_ALG.SHA256);
    expect(isDigestName(hex(AK_NAME).subarray(0, 33))).toBe(false);
    expect(isDigestName(Buffer.concat([hex('0022'), hex(AK_NAME)]))).toBe(false);
  });
});
