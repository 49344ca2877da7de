/**
 * EK certificate chains built with the openssl CLI, shaped like TPM vendors'
 * (empty subject, critical SubjectAltName holding only a directoryName).
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, createHash, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { AsnConvert } from '@peculiar/asn1-schema';
import { AttributeTypeAndValue, AttributeValue, GeneralName, Name, RelativeDistinguishedName, SubjectAlternativeName } from '@peculiar/asn1-x509';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { ekCertificateMatches, ekPublicHash, unwrapEkCertificate, verifyEkCertificate } from '../../src/tpm/ek-cert.js';
import { EkCertificateError } from '../../src/tpm/errors.js';
import { tpmtPublicFromPublicKey } from '../../src/tpm/public.js';
import { TPM_ALG, TPMA_OBJECT } from '../../src/tpm/constants.js';

const exec = promisify(execFile);
let dir: string;
const f = (n: string): string => join(dir, n);
const openssl = (...args: string[]) => exec('openssl', args, { cwd: dir });

function tpmSanHex(): string {
  const rdn = (oid: string, v: string) =>
    new RelativeDistinguishedName([new AttributeTypeAndValue({ type: oid, value: new AttributeValue({ utf8String: v }) })]);
  const san = new SubjectAlternativeName([
    new GeneralName({ directoryName: new Name([rdn('2.23.133.2.1', 'id:00001014'), rdn('2.23.133.2.2', 'keel-test'), rdn('2.23.133.2.3', 'id:20191023')]) }),
  ]);
  return Buffer.from(AsnConvert.serialize(san)).toString('hex');
}

async function ca(name: string, subject: string, issuer?: string, ext = 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\nsubjectKeyIdentifier=hash'): Promise<void> {
  await openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${name}.key`);
  await writeFile(f(`${name}.ext`), `[x]\n${ext}\n`);
  await openssl('pkey', '-in', `${name}.key`, '-pubout', '-out', `${name}.pub`);
  const signer = issuer ? ['-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-force_pubkey', `${name}.pub`] : ['-key', `${name}.key`];
  await openssl('x509', '-new', '-subj', subject, ...signer, '-extfile', `${name}.ext`, '-extensions', 'x', '-days', '30', '-out', `${name}.pem`);
}

async function ekCert(name: string, issuer: string, pubPem: string, extraExt = ''): Promise<Buffer> {
  await writeFile(f(`${name}.pub.pem`), pubPem);
  await writeFile(
    f(`${name}.ext`),
    `[x]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment\n2.5.29.17=critical,DER:${tpmSanHex()}\nextendedKeyUsage=2.23.133.8.1\n${extraExt}\n`,
  );
  await openssl('x509', '-new', '-subj', '/', '-CA', `${issuer}.pem`, '-CAkey', `${issuer}.key`, '-force_pubkey', `${name}.pub.pem`,
    '-extfile', `${name}.ext`, '-extensions', 'x', '-days', '10', '-outform', 'DER', '-out', `${name}.der`);
  return readFile(f(`${name}.der`));
}

const ek = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ekPub = tpmtPublicFromPublicKey(ek.publicKey, {
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt,
  symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
});
let leaf: Buffer;
let root: string;
let intermediate: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keel-ekcert-'));
  await ca('root', '/CN=Keel Test TPM Root');
  await ca('int', '/CN=Keel Test TPM EK CA', 'root');
  root = await readFile(f('root.pem'), 'utf8');
  intermediate = await readFile(f('int.pem'), 'utf8');
  leaf = await ekCert('ek', 'int', ek.publicKey.export({ type: 'spki', format: 'pem' }) as string);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const reason = (fn: () => unknown): string => {
  try {
    fn();
    return 'accepted';
  } catch (e) {
    expect(e).toBeInstanceOf(EkCertificateError);
    return (e as EkCertificateError).reason;
  }
};

describe('verifyEkCertificate', () => {
  it('accepts a TPM-shaped certificate (empty subject, critical directoryName SAN) up to the root', () => {
    const x = new X509Certificate(leaf);
    expect(x.subject).toBeFalsy();
    expect(x.subjectAltName).toMatch(/^DirName:/);
    const v = verifyEkCertificate(leaf, { roots: [root], intermediates: [intermediate] });
    expect(v.chain.map((c) => c.subject)).toEqual([x.subject, 'CN=Keel Test TPM EK CA', 'CN=Keel Test TPM Root']);
    expect(ekCertificateMatches(leaf, ekPub)).toBe(true);
    expect(ekCertificateMatches(leaf, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey)).toBe(false);
    expect(ekPublicHash(ekPub)).toBe(createHash('sha256').update(ek.publicKey.export({ type: 'spki', format: 'der' })).digest('hex'));
    expect(ekPublicHash(ekPub)).toBe(ekPublicHash(x.publicKey));
  });

  it('refuses without the intermediate, with another root, outside validity', () => {
    expect(reason(() => verifyEkCertificate(leaf, { roots: [root] }))).toBe('untrusted');
    expect(reason(() => verifyEkCertificate(leaf, { roots: [], intermediates: [intermediate, root] }))).toBe('untrusted');
    const later = new Date(Date.now() + 20 * 86400_000);
    expect(reason(() => verifyEkCertificate(leaf, { roots: [root], intermediates: [intermediate], now: later }))).toBe('expired');
    const earlier = new Date(Date.now() - 86400_000);
    expect(reason(() => verifyEkCertificate(leaf, { roots: [root], intermediates: [intermediate], now: earlier }))).toBe('not-yet-valid');
  });

  it('refuses a certificate signed by an impostor CA of the same name', async () => {
    // no key identifiers, so that only the signature can tell the two CAs apart
    await ca('fake', '/CN=Keel Test TPM EK CA', 'root', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\nsubjectKeyIdentifier=none\nauthorityKeyIdentifier=none');
    await ca('int2', '/CN=Keel Test TPM EK CA', 'root', 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\nsubjectKeyIdentifier=none\nauthorityKeyIdentifier=none');
    const signedByFake = await ekCert('ek-fake', 'fake', ek.publicKey.export({ type: 'spki', format: 'pem' }) as string, 'authorityKeyIdentifier=none');
    const fake = await readFile(f('int2.pem'), 'utf8');
    expect(reason(() => verifyEkCertificate(signedByFake, { roots: [root], intermediates: [fake] }))).toBe('signature');
  });

  it('refuses an issuer that is not a CA', async () => {
    await ca('notca', '/CN=Keel Not A CA', 'root', 'basicConstraints=critical,CA:FALSE\nsubjectKeyIdentifier=hash');
    const byNotCa = await ekCert('ek-notca', 'notca', ek.publicKey.export({ type: 'spki', format: 'pem' }) as string);
    const notCa = await readFile(f('notca.pem'), 'utf8');
    expect(reason(() => verifyEkCertificate(byNotCa, { roots: [root], intermediates: [notCa] }))).toBe('issuer-not-ca');
  });
});

describe('unwrapEkCertificate', () => {
  it('strips the TCG NV framing and trailing padding', () => {
    const framed = Buffer.concat([Buffer.from([0x10, 0x01, leaf.length >> 8, leaf.length & 0xff]), leaf, Buffer.alloc(64, 0xff)]);
    expect(unwrapEkCertificate(framed).equals(leaf)).toBe(true);
    expect(unwrapEkCertificate(Buffer.concat([leaf, Buffer.alloc(100)])).equals(leaf)).toBe(true);
    expect(unwrapEkCertificate(leaf).equals(leaf)).toBe(true);
  });

  it('refuses truncated certificates and framing that claims more than is there', () => {
    expect(() => unwrapEkCertificate(leaf.subarray(0, leaf.length - 1))).toThrow(EkCertificateError);
    const framed = Buffer.concat([Buffer.from([0x10, 0x01, 0xff, 0xff]), leaf]);
    expect(() => unwrapEkCertificate(framed)).toThrow(/NV framing claims 65535/);
    expect(() => unwrapEkCertificate(Buffer.alloc(0))).toThrow(EkCertificateError);
  });
});
