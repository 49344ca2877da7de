import { readFileSync } from 'node:fs';
import {
  createDecipheriv, createECDH, createHash, createHmac, generateKeyPairSync, privateDecrypt, constants, type KeyObject,
} from 'node:crypto';
import { describe, it, expect } from 'vitest';
import {
  encapsulateSeed, makeCredential, credentialToTpm2ToolsFile, credentialFromTpm2ToolsFile,
} from '../../src/tpm/credential.js';
import { parseTpmtPublic, tpmtPublicFromPublicKey, type TpmtPublic } from '../../src/tpm/public.js';
import { TPM_ALG, TPMA_OBJECT, digestSize, nodeHashName } from '../../src/tpm/constants.js';
import { kdfa, kdfe } from '../../src/tpm/kdf.js';
import { CredentialError, TpmParseError } from '../../src/tpm/errors.js';
import { TpmReader } from '../../src/tpm/reader.js';

interface EccVector { Name: string; Label: string; EphemeralPrivate: string; PublicKey: string; Secret: string; Ciphertext: string }
const eccVectors = JSON.parse(readFileSync(new URL('./vectors/ecc_labeled_encaps.json', import.meta.url), 'utf8')) as EccVector[];

describe('ECC seed encapsulation (published vectors)', () => {
  it.each(eccVectors.map((v) => [v.Name, v] as const))('%s', (_n, v) => {
    const pub = parseTpmtPublic(Buffer.from(v.PublicKey, 'hex'));
    const out = encapsulateSeed(pub, v.Label, { ephemeralPrivateKey: Buffer.from(v.EphemeralPrivate, 'hex') });
    expect(out.seed.toString('hex')).toBe(v.Secret);
    expect(out.encryptedSecret.toString('hex')).toBe(v.Ciphertext);
  });
});

const EK_ATTRS = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin
  | TPMA_OBJECT.adminWithPolicy | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;

function softwareEk(kind: 'rsa' | 'p256' | 'p384', nameAlg: number, keyBits: number): { pub: TpmtPublic; priv: KeyObject } {
  const { publicKey, privateKey } = kind === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: kind === 'p256' ? 'prime256v1' : 'secp384r1' });
  const pub = tpmtPublicFromPublicKey(publicKey, {
    nameAlg, objectAttributes: EK_ATTRS, symmetric: { algorithm: TPM_ALG.AES, keyBits, mode: TPM_ALG.CFB },
  });
  return { pub, priv: privateKey };
}

/** A software ActivateCredential, written from Part 1 §24, to check what makeCredential produced. */
function activate(ek: TpmtPublic, priv: KeyObject, akName: Buffer, blob: Buffer, encSecret: Buffer): Buffer {
  const hash = nodeHashName(ek.nameAlg);
  let seed: Buffer;
  if (ek.type === TPM_ALG.RSA) {
    seed = privateDecrypt({ key: priv, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash, oaepLabel: Buffer.from('IDENTITY\0') }, encSecret);
  } else {
    const r = new TpmReader(encSecret, 'point');
    const x = r.sized(100);
    const y = r.sized(100);
    const ecdh = createECDH(ek.parameters.curveId === 3 ? 'prime256v1' : 'secp384r1');
    ecdh.setPrivateKey(Buffer.from(priv.export({ format: 'jwk' }).d!, 'base64url'));
    const z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), x, y]));
    seed = kdfe(ek.nameAlg, z, 'IDENTITY', x, ek.unique.x, digestSize(ek.nameAlg) * 8);
  }
  const r = new TpmReader(blob, 'id');
  const hmac = r.sized(64);
  const encIdentity = r.bytes(r.remaining);
  const hmacKey = kdfa(ek.nameAlg, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), digestSize(ek.nameAlg) * 8);
  expect(createHmac(hash, hmacKey).update(encIdentity).update(akName).digest().equals(hmac)).toBe(true);
  const sym = ek.parameters.symmetric!;
  const key = kdfa(ek.nameAlg, seed, 'STORAGE', akName, Buffer.alloc(0), sym.keyBits);
  const d = createDecipheriv(`aes-${sym.keyBits}-cfb`, key, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  return plain.subarray(2, 2 + plain.readUInt16BE(0));
}

const akName = Buffer.concat([Buffer.from([0, 0x0b]), createHash('sha256').update('ak').digest()]);

describe('makeCredential', () => {
  it.each([
    ['RSA-2048, SHA-256, AES-128', 'rsa', TPM_ALG.SHA256, 128],
    ['ECC P-256, SHA-256, AES-128', 'p256', TPM_ALG.SHA256, 128],
    ['ECC P-384, SHA-384, AES-256', 'p384', TPM_ALG.SHA384, 256],
  ] as const)('%s: a software activation with the EK private key returns the secret', (_n, kind, nameAlg, bits) => {
    const { pub, priv } = softwareEk(kind, nameAlg, bits);
    const secret = Buffer.from('0123456789abcdef0123456789abcdef');
    const c = makeCredential(pub, akName, secret);
    expect(activate(pub, priv, akName, c.credentialBlob, c.encryptedSecret)).toEqual(secret);
    // bound to the AK name: another name fails the integrity HMAC
    const other = Buffer.from(akName);
    other[5]! ^= 1;
    expect(() => activate(pub, priv, other, c.credentialBlob, c.encryptedSecret)).toThrow();
    // fresh seed every time
    expect(makeCredential(pub, akName, secret).credentialBlob.equals(c.credentialBlob)).toBe(false);
  });

  it('refuses what the TPM would refuse', () => {
    const { pub } = softwareEk('p256', TPM_ALG.SHA256, 128);
    expect(() => makeCredential(pub, akName, Buffer.alloc(33))).toThrow(CredentialError);
    expect(() => makeCredential(pub, akName, Buffer.alloc(0))).toThrow(CredentialError);
    const tpm2bName = Buffer.concat([Buffer.from([0, 34]), akName]);
    expect(() => makeCredential(pub, tpm2bName, Buffer.alloc(8))).toThrow(/akName/);
    const signing = { ...pub, objectAttributes: (pub.objectAttributes & ~TPMA_OBJECT.decrypt) | TPMA_OBJECT.sign };
    expect(() => makeCredential(signing, akName, Buffer.alloc(8))).toThrow(/restricted decryption/);
    const noSym = { ...pub, parameters: { ...pub.parameters, symmetric: null } } as TpmtPublic;
    expect(() => makeCredential(noSym, akName, Buffer.alloc(8))).toThrow(/symmetric/);
  });
});

describe('tpm2-tools credential file', () => {
  it('is magic, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET, and reads back', () => {
    const c = { credentialBlob: Buffer.from('aabbcc', 'hex'), encryptedSecret: Buffer.from('0102', 'hex') };
    const f = credentialToTpm2ToolsFile(c);
    expect(f.toString('hex')).toBe('badcc0de' + '00000001' + '0003aabbcc' + '00020102');
    expect(credentialFromTpm2ToolsFile(f)).toEqual(c);
    expect(() => credentialFromTpm2ToolsFile(Buffer.concat([f, Buffer.alloc(1)]))).toThrow(TpmParseError);
    const v2 = Buffer.from(f);
    v2[7] = 2;
    expect(() => credentialFromTpm2ToolsFile(v2)).toThrow(/version 2/);
  });
});
