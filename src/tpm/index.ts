/** keel's TPM structures and verifier side: no TPM needed. */
export * from './errors.js';
export { TpmReader, parseExact } from './reader.js';
export { TpmWriter } from './writer.js';
export {
  TPM_ALG, TPM_ECC_CURVE, TPMA_OBJECT, TPM_ST, TPM_GENERATED_VALUE,
  digestSize, nodeHashName, isHashAlg, attributeNames,
  type TpmAlgId, type TpmaObjectName,
} from './constants.js';
export {
  parseTpmtPublic, parseTpm2bPublic, readTpmtPublic, readTpm2bPublic, marshalTpmtPublic, marshalTpm2bPublic,
  toTpmtPublic, publicKeyFromTpmtPublic, tpmtPublicFromPublicKey,
  type TpmtPublic, type TpmtPublicRsa, type TpmtPublicEcc, type TpmtSymDefObject, type TpmtAsymScheme,
  type TpmtKdfScheme, type PublicTemplate,
} from './public.js';
export {
  parseTpmsAttest, readTpmsAttest, marshalTpmsAttest,
  type TpmsAttest, type TpmsAttestQuote, type TpmsAttestCertify, type TpmsAttestCreation,
  type TpmsClockInfo, type TpmsQuoteInfo, type TpmsCertifyInfo, type TpmsCreationInfo,
} from './attest.js';
export { parseTpmtSignature, readTpmtSignature, marshalTpmtSignature, verifyTpmSignature, type TpmtSignature } from './signature.js';
export {
  parsePcrSelection, readPcrSelection, marshalPcrSelection, writePcrSelection, pcrSelection, selectedPcrs,
  pcrSelectionEquals, MAX_PCR_BANKS, MAX_SIZEOF_SELECT, type TpmsPcrSelection, type TpmlPcrSelection,
} from './pcr-selection.js';
export { objectName, isDigestName, nameAlgOf } from './name.js';
export { kdfa, kdfe } from './kdf.js';
export {
  makeCredential, encapsulateSeed, credentialToTpm2ToolsFile, credentialFromTpm2ToolsFile,
  type Credential, type EncapsulatedSeed,
} from './credential.js';
export { verifyQuote, checkClockProgress, type VerifyQuoteInput, type VerifiedQuote } from './quote.js';
export { checkAkPublic } from './ak.js';
export { checkAgentKeyPublic, verifyCertify, type VerifyCertifyInput } from './certify.js';
export { ecdsaSignatureDer } from './signature.js';
export {
  unwrapEkCertificate, verifyEkCertificate, ekCertificateMatches, ekPublicHash,
  type EkChainOptions, type VerifiedEkCertificate,
} from './ek-cert.js';
