/**
 * TPM2_MakeCredential in software (TPM 2.0 Part 1 §24 and Part 3 §12.6):
 * protects a secret so that only the TPM holding the EK, and only for an
 * object with the given name (the AK), can recover it with ActivateCredential.
 */
import { createCipheriv, createECDH, createHmac, publicEncrypt, randomBytes, constants } from 'node:crypto';
import { MAX_DIGEST_SIZE, MAX_RSA_KEY_BYTES, TPM_ALG, TPMA_OBJECT, curveInfo, digestSize, hex16, nodeHashName } from './constants.js';
import { CredentialError } from './errors.js';
import { isDigestName } from './name.js';
import { publicKeyFromTpmtPublic, toTpmtPublic, type TpmtPublic, type TpmtPublicEcc } from './public.js';
import { TpmReader, parseExact } from './reader.js';
import { TpmWriter } from './writer.js';
import { kdfa, kdfe } from './kdf.js';

export interface Credential {
  /** Contents of the TPM2B_ID_OBJECT: TPM2B(outer HMAC) || encIdentity. */
  readonly credentialBlob: Buffer;
  /** Contents of the TPM2B_ENCRYPTED_SECRET: OAEP ciphertext (RSA) or TPMS_ECC_POINT (ECC). */
  readonly encryptedSecret: Buffer;
}

export interface EncapsulatedSeed {
  readonly seed: Buffer;
  readonly encryptedSecret: Buffer;
}

/** AES key sizes node:crypto names as aes-<bits>-cfb. */
const AES_BITS: ReadonlySet<number> = new Set([128, 192, 256]);

function requireStorageKey(ek: TpmtPublic): { keyBits: number } {
  const a = ek.objectAttributes;
  if (!(a & TPMA_OBJECT.restricted) || !(a & TPMA_OBJECT.decrypt) || a & TPMA_OBJECT.sign) {
    throw new CredentialError('the EK public area is not a restricted decryption key');
  }
  const sym = ek.parameters.symmetric;
  if (!sym || sym.algorithm !== TPM_ALG.AES || sym.mode !== TPM_ALG.CFB || !AES_BITS.has(sym.keyBits)) {
    throw new CredentialError('the EK symmetric definition is not AES-128/192/256-CFB');
  }
  digestSize(ek.nameAlg); // throws TpmUnsupportedError for an unknown nameAlg
  return { keyBits: sym.keyBits };
}

function eccPoint(x: Buffer, y: Buffer): Buffer {
  return new TpmWriter('TPMS_ECC_POINT').sized(x).sized(y).toBuffer();
}

/**
 * Creates a seed and encrypts it to the EK (TPM 2.0 Part 1 §11.4.9 "secret sharing"):
 * RSA-OAEP with the label, or ECDH with an ephemeral key and KDFe.
 * `ephemeralPrivateKey` (a raw ECC scalar) exists for known-answer tests only.
 */
export function encapsulateSeed(
  ekPublic: TpmtPublic | Uint8Array,
  label: string,
  opts: { ephemeralPrivateKey?: Uint8Array } = {},
): EncapsulatedSeed {
  const ek = toTpmtPublic(ekPublic);
  const size = digestSize(ek.nameAlg);
  if (ek.type === TPM_ALG.RSA) {
    const seed = randomBytes(size);
    const encryptedSecret = publicEncrypt(
      {
        key: publicKeyFromTpmtPublic(ek),
        padding: constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: nodeHashName(ek.nameAlg),
        oaepLabel: Buffer.from(`${label}\0`, 'latin1'),
      },
      seed,
    );
    return { seed, encryptedSecret };
  }
  return encapsulateEcc(ek, label, size, opts.ephemeralPrivateKey);
}

function encapsulateEcc(ek: TpmtPublicEcc, label: string, size: number, ephemeral?: Uint8Array): EncapsulatedSeed {
  const curve = curveInfo(ek.parameters.curveId);
  publicKeyFromTpmtPublic(ek); // refuses a point that is not on the curve
  const pad = (b: Buffer): Buffer => Buffer.concat([Buffer.alloc(Math.max(0, curve.size - b.length)), b]);
  const ekPoint = Buffer.concat([Buffer.from([4]), pad(ek.unique.x), pad(ek.unique.y)]);
  const ecdh = createECDH(curve.node);
  if (ephemeral) ecdh.setPrivateKey(Buffer.from(ephemeral));
  else ecdh.generateKeys();
  const pub = ecdh.getPublicKey();
  const ephX = pub.subarray(1, 1 + curve.size);
  const ephY = pub.subarray(1 + curve.size);
  const z = ecdh.computeSecret(ekPoint);
  const seed = kdfe(ek.nameAlg, z, label, ephX, ek.unique.x, size * 8);
  return { seed, encryptedSecret: eccPoint(ephX, ephY) };
}

/**
 * MakeCredential(EK public, AK name, secret). The secret (1 to digest-size-of-nameAlg
 * bytes) comes back from TPM2_ActivateCredential only on the TPM holding the EK,
 * and only when the activated object's name is `akName`.
 */
export function makeCredential(ekPublic: TpmtPublic | Uint8Array, akName: Uint8Array, secret: Uint8Array): Credential {
  const ek = toTpmtPublic(ekPublic);
  const { keyBits } = requireStorageKey(ek);
  if (!isDigestName(akName)) throw new CredentialError('akName is not nameAlg || digest (pass the name, not a TPM2B_NAME)');
  const size = digestSize(ek.nameAlg);
  if (secret.length === 0 || secret.length > size) {
    throw new CredentialError(`the secret must be 1..${size} bytes for nameAlg ${hex16(ek.nameAlg)}`);
  }
  const hash = nodeHashName(ek.nameAlg);
  const { seed, encryptedSecret } = encapsulateSeed(ek, 'IDENTITY');

  const symKey = kdfa(ek.nameAlg, seed, 'STORAGE', akName, Buffer.alloc(0), keyBits);
  const plain = new TpmWriter('TPM2B_DIGEST').sized(secret, MAX_DIGEST_SIZE).toBuffer();
  const cipher = createCipheriv(`aes-${keyBits}-cfb`, symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(plain), cipher.final()]);

  const hmacKey = kdfa(ek.nameAlg, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), size * 8);
  const outerHmac = createHmac(hash, hmacKey).update(encIdentity).update(akName).digest();
  const credentialBlob = new TpmWriter('TPM2B_ID_OBJECT').sized(outerHmac).bytes(encIdentity).toBuffer();
  return { credentialBlob, encryptedSecret };
}

// ---- tpm2-tools file format (tools/tpm2_makecredential.c, lib/files.c) ----

const TPM2_TOOLS_MAGIC = 0xbadcc0de;
const TPM2_TOOLS_CREDENTIAL_VERSION = 1;
/** sizeof(TPMS_ID_OBJECT): TPM2B_DIGEST integrityHMAC + TPM2B_DIGEST encIdentity. */
const MAX_ID_OBJECT = 2 * (2 + MAX_DIGEST_SIZE);
/** sizeof(TPMU_ENCRYPTED_SECRET): the larger of an RSA-4096 ciphertext and an ECC point. */
const MAX_ENCRYPTED_SECRET = MAX_RSA_KEY_BYTES;

/** The file `tpm2_makecredential -o` writes and `tpm2_activatecredential -i` reads. */
export function credentialToTpm2ToolsFile(c: Credential): Buffer {
  return new TpmWriter('tpm2-tools credential')
    .u32(TPM2_TOOLS_MAGIC)
    .u32(TPM2_TOOLS_CREDENTIAL_VERSION)
    .sized(c.credentialBlob, MAX_ID_OBJECT, 'TPM2B_ID_OBJECT')
    .sized(c.encryptedSecret, MAX_ENCRYPTED_SECRET, 'TPM2B_ENCRYPTED_SECRET')
    .toBuffer();
}

export function credentialFromTpm2ToolsFile(bytes: Uint8Array): Credential {
  return parseExact(bytes, (r: TpmReader) => r.within('tpm2-tools credential', () => {
    const magicAt = r.offset;
    if (r.u32() !== TPM2_TOOLS_MAGIC) r.fail('bad magic (want 0xBADCC0DE)', magicAt);
    const versionAt = r.offset;
    const version = r.u32();
    if (version !== TPM2_TOOLS_CREDENTIAL_VERSION) r.fail(`version ${version}, want 1`, versionAt);
    const credentialBlob = r.within('TPM2B_ID_OBJECT', () => r.sized(MAX_ID_OBJECT));
    const encryptedSecret = r.within('TPM2B_ENCRYPTED_SECRET', () => r.sized(MAX_ENCRYPTED_SECRET));
    return { credentialBlob, encryptedSecret };
  }));
}

