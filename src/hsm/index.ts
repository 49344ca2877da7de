/** src/hsm: PKCS#11 key custody (see docs in each module). */
export { Hsm, type HsmKey } from './hsm.js';
export { HsmSigner } from './signer.js';
export type { HsmConfig, HsmKeyType, HsmAlgorithm } from './config.js';
export { parsePkcs11Uri, hsmConfigFromPkcs11Uri, InvalidPkcs11UriError, type Pkcs11Uri, type Pkcs11ObjectType } from './pkcs11-uri.js';
export { p1363ToDer, derToP1363, InvalidEcdsaSignatureError } from './ecdsa-format.js';
export { InvalidPublicKeyError } from './key-material.js';
export { readPinSync, pinFileModeRefusal, type PinSource } from './pin.js';
export {
  Pkcs11Error,
  HsmSessionError,
  HsmTokenNotPresentError,
  HsmNotLoggedInError,
  HsmPinIncorrectError,
  HsmPinLockedError,
  HsmKeyNotFoundError,
  HsmConfigError,
  PinSourceError,
  HsmBusyError,
  HsmClosedError,
  HsmKeyExistsError,
  HsmUnsupportedKeyError,
  HsmAlgorithmError,
} from './errors.js';
