/** Shared pieces of the CA tests: CSR making, an in-memory key store for pure-logic tests, openssl, SoftHSM set-up. */
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync, sign, constants, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { AsnConvert } from '@peculiar/asn1-schema';
import { CertificationRequest, CertificationRequestInfo, Attributes } from '@peculiar/asn1-csr';
import { AlgorithmIdentifier, Name, SubjectPublicKeyInfo, AttributeTypeAndValue, AttributeValue, RelativeDistinguishedName } from '@peculiar/asn1-x509';
import { RsaSaPssParams, sha256, mgf1SHA1 } from '@peculiar/asn1-rsa';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import type { CaKeyHandle, CaKeyStore, CaKeyType } from '../../src/server/ca/index.js';
import { signerFromPrivateKey } from '../../src/server/ca/index.js';
import type { Signer, SignatureAlgorithm } from '../../src/spiffe/signer.js';

export const run = promisify(execFile);

export type CsrAlg = 'ecdsa-sha256' | 'ecdsa-sha384' | 'rsa-sha256' | 'rsa-pss-sha256';

const SIG_OID: Record<CsrAlg, string> = {
  'ecdsa-sha256': '1.2.840.10045.4.3.2',
  'ecdsa-sha384': '1.2.840.10045.4.3.3',
  'rsa-sha256': '1.2.840.113549.1.1.11',
  'rsa-pss-sha256': '1.2.840.113549.1.1.10',
};

/** A CSR built with @peculiar/asn1-csr and signed with Node, with a subject the CA must ignore. */
export function makeCsr(priv: KeyObject, alg: CsrAlg = 'ecdsa-sha256', opts: { subjectCn?: string; corruptSignature?: boolean; spki?: Buffer } = {}): Buffer {
  const spki = AsnConvert.parse(opts.spki ?? exportSpki(priv), SubjectPublicKeyInfo);
  const subject = new Name([
    new RelativeDistinguishedName([new AttributeTypeAndValue({ type: '2.5.4.3', value: new AttributeValue({ utf8String: opts.subjectCn ?? 'ignored.example' }) })]),
  ]);
  const info = new CertificationRequestInfo({ version: 0, subject, subjectPKInfo: spki, attributes: new Attributes() });
  const infoDer = Buffer.from(AsnConvert.serialize(info));
  let sig: Buffer;
  let algId: AlgorithmIdentifier;
  if (alg === 'rsa-pss-sha256') {
    const params = new RsaSaPssParams({ hashAlgorithm: sha256, maskGenAlgorithm: new AlgorithmIdentifier({ algorithm: mgf1SHA1.algorithm, parameters: AsnConvert.serialize(sha256) }), saltLength: 32 });
    algId = new AlgorithmIdentifier({ algorithm: SIG_OID[alg], parameters: AsnConvert.serialize(params) });
    sig = sign('sha256', infoDer, { key: priv, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  } else {
    algId = new AlgorithmIdentifier({ algorithm: SIG_OID[alg], parameters: alg.startsWith('rsa') ? null : undefined });
    sig = sign(alg.endsWith('384') ? 'sha384' : 'sha256', infoDer, priv);
  }
  if (opts.corruptSignature) sig[sig.length - 5]! ^= 0x01;
  const csr = new CertificationRequest({ certificationRequestInfo: info, signatureAlgorithm: algId, signature: new Uint8Array(sig).buffer });
  return Buffer.from(AsnConvert.serialize(csr));
}

const exportSpki = (priv: KeyObject): Buffer => createPublicKey(priv).export({ format: 'der', type: 'spki' });

export const ecKey = (curve: 'P-256' | 'P-384' = 'P-256'): KeyObject => generateKeyPairSync('ec', { namedCurve: curve }).privateKey;
export const rsaKey = (bits = 2048): KeyObject => generateKeyPairSync('rsa', { modulusLength: bits }).privateKey;

export function toPem(der: Buffer, label = 'CERTIFICATE'): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

/**
 * Keys in process memory, for unit tests of pure logic only; integration
 * tests use SoftHSM through src/hsm.
 */
export class MemoryKeyStore implements CaKeyStore {
  readonly keys = new Map<string, { handle: CaKeyHandle; priv: KeyObject }>();
  destroyed: string[] = [];
  async generateKey(o: { label: string; id?: Buffer; type: CaKeyType }): Promise<CaKeyHandle> {
    const priv =
      o.type === 'ec-p256' ? ecKey('P-256') : o.type === 'ec-p384' ? ecKey('P-384') : rsaKey(o.type === 'rsa-2048' ? 2048 : 3072);
    const handle: CaKeyHandle = { label: o.label, id: o.id ?? createHash('sha1').update(o.label).digest(), type: o.type, publicKey: createPublicKey(priv) };
    this.keys.set(o.label, { handle, priv });
    return handle;
  }
  async findKey(o: { label?: string; id?: Buffer }): Promise<CaKeyHandle | undefined> {
    for (const { handle } of this.keys.values()) {
      if ((o.label === undefined || handle.label === o.label) && (o.id === undefined || handle.id.equals(o.id))) return handle;
    }
    return undefined;
  }
  async destroyKey(k: CaKeyHandle): Promise<void> {
    this.keys.delete(k.label);
    this.destroyed.push(k.label);
  }
  signer(k: CaKeyHandle, algorithm?: SignatureAlgorithm): Signer {
    const entry = this.keys.get(k.label);
    if (!entry) throw new Error(`no key ${k.label}`);
    return signerFromPrivateKey(entry.priv, algorithm);
  }
}

export interface CaTestToken {
  tok: SoftHsmToken;
  pinEnv: string;
  config: { module: string; token: { label: string }; pin: { env: string }; sessions?: number };
}

/** One real SoftHSM token for this test file (SoftHSM reads SOFTHSM2_CONF once per process). */
export async function caTestToken(label = 'keel-ca', sessions = 4): Promise<CaTestToken> {
  const tok = await createSoftHsmToken({ label });
  process.env.SOFTHSM2_CONF = tok.conf;
  const pinEnv = `KEEL_CA_TEST_PIN_${process.pid}`;
  process.env[pinEnv] = tok.pin;
  return { tok, pinEnv, config: { module: tok.module, token: { label }, pin: { env: pinEnv }, sessions } };
}

/** A fake clock the tests move by hand. */
export class FakeClock {
  constructor(public ms: number) {}
  now = (): number => this.ms;
  advance(seconds: number): number {
    this.ms += seconds * 1000;
    return this.ms;
  }
}
