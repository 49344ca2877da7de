/** fast-check generators of well-formed TPM structures. */
import fc from 'fast-check';
import { TPM_ALG, TPM_ST } from '../../src/tpm/constants.js';
import type { TpmtPublic, TpmtAsymScheme, TpmtSymDefObject } from '../../src/tpm/public.js';
import type { TpmsAttest } from '../../src/tpm/attest.js';
import type { TpmtSignature } from '../../src/tpm/signature.js';
import type { TpmlPcrSelection } from '../../src/tpm/pcr-selection.js';

const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b));
const hashAlg = fc.constantFrom(TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384, TPM_ALG.SHA512, TPM_ALG.SM3_256);
const sym: fc.Arbitrary<TpmtSymDefObject | null> = fc.option(
  fc.record({
    algorithm: fc.constantFrom(TPM_ALG.AES, TPM_ALG.SM4, TPM_ALG.CAMELLIA),
    keyBits: fc.constantFrom(128, 192, 256),
    mode: fc.constantFrom(TPM_ALG.CFB, TPM_ALG.NULL, TPM_ALG.CBC),
  }),
);
const rsaScheme: fc.Arbitrary<TpmtAsymScheme | null> = fc.option(
  fc.oneof(
    fc.constant({ scheme: TPM_ALG.RSAES } as const),
    fc.record({ scheme: fc.constantFrom(TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.OAEP), hashAlg }),
  ),
);
const eccScheme: fc.Arbitrary<TpmtAsymScheme | null> = fc.option(
  fc.oneof(
    fc.record({ scheme: fc.constant(TPM_ALG.ECDAA), hashAlg, count: fc.integer({ min: 0, max: 0xffff }) }),
    fc.record({ scheme: fc.constantFrom(TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.SM2, TPM_ALG.ECSCHNORR, TPM_ALG.ECMQV), hashAlg }),
  ),
);
const common = {
  nameAlg: fc.oneof(hashAlg, fc.constant(TPM_ALG.NULL)),
  objectAttributes: fc.integer({ min: 0, max: 0xffffffff }),
  authPolicy: bytes(64),
};

export const arbTpmtPublic: fc.Arbitrary<TpmtPublic> = fc.oneof(
  fc.record({
    type: fc.constant(TPM_ALG.RSA),
    ...common,
    parameters: fc.record({ symmetric: sym, scheme: rsaScheme, keyBits: fc.constantFrom(1024, 2048, 3072, 4096), exponent: fc.integer({ min: 0, max: 0xffffffff }) }),
    unique: bytes(512),
  }),
  fc.record({
    type: fc.constant(TPM_ALG.ECC),
    ...common,
    parameters: fc.record({
      symmetric: sym,
      scheme: eccScheme,
      curveId: fc.integer({ min: 0, max: 0xffff }),
      kdf: fc.option(fc.record({ scheme: fc.constantFrom(TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108), hashAlg })),
    }),
    unique: fc.record({ x: bytes(80), y: bytes(80) }),
  }),
) as fc.Arbitrary<TpmtPublic>;

export const arbSelection: fc.Arbitrary<TpmlPcrSelection> = fc.array(
  fc.record({
    hashAlg,
    pcrs: fc.uniqueArray(fc.integer({ min: 0, max: 31 }), { maxLength: 32 }).map((a) => a.sort((x, y) => x - y)),
  }),
  { maxLength: 16 },
);

const clockInfo = fc.record({
  clock: fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }),
  resetCount: fc.integer({ min: 0, max: 0xffffffff }),
  restartCount: fc.integer({ min: 0, max: 0xffffffff }),
  safe: fc.boolean(),
});
const attestCommon = {
  magic: fc.integer({ min: 0, max: 0xffffffff }),
  qualifiedSigner: bytes(66),
  extraData: bytes(66),
  clockInfo,
  firmwareVersion: fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }),
};

export const arbAttest: fc.Arbitrary<TpmsAttest> = fc.oneof(
  fc.record({ ...attestCommon, type: fc.constant(TPM_ST.ATTEST_QUOTE), attested: fc.record({ pcrSelect: arbSelection, pcrDigest: bytes(64) }) }),
  fc.record({ ...attestCommon, type: fc.constant(TPM_ST.ATTEST_CERTIFY), attested: fc.record({ name: bytes(66), qualifiedName: bytes(66) }) }),
  fc.record({ ...attestCommon, type: fc.constant(TPM_ST.ATTEST_CREATION), attested: fc.record({ objectName: bytes(66), creationHash: bytes(64) }) }),
) as fc.Arbitrary<TpmsAttest>;

export const arbSignature: fc.Arbitrary<TpmtSignature> = fc.oneof(
  fc.record({ sigAlg: fc.constantFrom(TPM_ALG.RSASSA, TPM_ALG.RSAPSS), hashAlg, sig: bytes(512) }),
  fc.record({ sigAlg: fc.constantFrom(TPM_ALG.ECDSA, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR), hashAlg, r: bytes(80), s: bytes(80) }),
  fc.constant({ sigAlg: TPM_ALG.NULL } as const),
  fc.constantFrom(TPM_ALG.SHA1, TPM_ALG.SHA256, TPM_ALG.SHA384).chain((h) =>
    fc.record({ sigAlg: fc.constant(TPM_ALG.HMAC), hashAlg: fc.constant(h), digest: fc.uint8Array({ minLength: h === TPM_ALG.SHA1 ? 20 : h === TPM_ALG.SHA256 ? 32 : 48, maxLength: h === TPM_ALG.SHA1 ? 20 : h === TPM_ALG.SHA256 ? 32 : 48 }).map((b) => Buffer.from(b)) }),
  ),
) as fc.Arbitrary<TpmtSignature>;
