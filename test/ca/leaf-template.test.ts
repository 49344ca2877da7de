/**
 * Unit tests of the leaf template (pure DER logic; the signer is in memory).
 * The reference is an independent generic build of the same fields with
 * @peculiar/asn1-x509, and parsing by Node, asn1-x509 and openssl.
 */
import { X509Certificate, createPublicKey } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  AlgorithmIdentifier,
  AttributeTypeAndValue,
  AttributeValue,
  AuthorityKeyIdentifier,
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  Extension,
  Extensions,
  GeneralName,
  KeyIdentifier,
  KeyUsage,
  KeyUsageFlags,
  Name,
  RelativeDistinguishedName,
  SubjectAlternativeName,
  SubjectKeyIdentifier,
  SubjectPublicKeyInfo,
  TBSCertificate,
  Validity,
  Version,
} from '@peculiar/asn1-x509';
import { LeafTemplate, encodeTime, parseCsr, readCaCertificate, buildCaCertificate, signerFromPrivateKey, type LeafFields } from '../../src/server/ca/index.js';
import { randomSerial } from '../../src/server/ca/serial.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { checkX509SvidLeaf } from '../../src/spiffe/x509-svid.js';
import { ecKey, makeCsr, run, toPem } from './helpers.js';

const td = TrustDomain.parse('example.org');
const caPriv = ecKey();
const caSigner = signerFromPrivateKey(caPriv);
let ca: ReturnType<typeof readCaCertificate>;
let template: LeafTemplate;
const leafKey = ecKey();
const csr = parseCsr(makeCsr(leafKey));

function rdn(type: string, value: string): RelativeDistinguishedName {
  return new RelativeDistinguishedName([new AttributeTypeAndValue({ type, value: new AttributeValue({ utf8String: value }) })]);
}
const ext = (extnID: string, critical: boolean, value: object): Extension =>
  new Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });

/** The same leaf, assembled the generic way. */
function genericTbs(f: LeafFields, issuer: Buffer, issuerKeyId: Buffer): Buffer {
  const subject = new Name([rdn('2.5.4.10', 'keel'), ...(f.dnsNames[0] ? [rdn('2.5.4.3', f.dnsNames[0])] : [])]);
  const tbs = new TBSCertificate({
    version: Version.v3,
    serialNumber: new Uint8Array(f.serial).buffer,
    signature: new AlgorithmIdentifier({ algorithm: '1.2.840.10045.4.3.2' }),
    issuer: AsnConvert.parse(issuer, Name),
    validity: new Validity({ notBefore: new Date(f.notBeforeMs), notAfter: new Date(f.notAfterMs) }),
    subject,
    subjectPublicKeyInfo: AsnConvert.parse(f.spkiDer, SubjectPublicKeyInfo),
    extensions: new Extensions([
      ext('2.5.29.15', true, new KeyUsage(KeyUsageFlags.digitalSignature | KeyUsageFlags.keyEncipherment | KeyUsageFlags.keyAgreement)),
      ext('2.5.29.37', false, new ExtendedKeyUsage(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'])),
      ext('2.5.29.19', true, new BasicConstraints({ cA: false })),
      ext('2.5.29.35', false, new AuthorityKeyIdentifier({ keyIdentifier: new KeyIdentifier(new Uint8Array(issuerKeyId).buffer) })),
      ext('2.5.29.14', false, new SubjectKeyIdentifier(new Uint8Array(f.subjectKeyId).buffer)),
      ext('2.5.29.17', false, new SubjectAlternativeName([new GeneralName({ uniformResourceIdentifier: f.spiffeId }), ...f.dnsNames.map((d) => new GeneralName({ dNSName: d }))])),
    ]),
  });
  return Buffer.from(AsnConvert.serialize(tbs));
}

function fields(over: Partial<LeafFields> = {}): LeafFields {
  return {
    serial: randomSerial(),
    notBeforeMs: Date.UTC(2030, 0, 2, 3, 4, 5),
    notAfterMs: Date.UTC(2030, 0, 2, 4, 4, 5),
    spiffeId: 'spiffe://example.org/ns/prod/sa/web',
    dnsNames: ['web.example.org', 'web'],
    spkiDer: csr.spkiDer,
    subjectKeyId: csr.subjectKeyId,
    ...over,
  };
}

/** The TBS as a plain object without the fields that differ per certificate. */
function shapeOf(tbsDer: Buffer): unknown {
  const t = AsnConvert.parse(tbsDer, TBSCertificate);
  return {
    version: t.version,
    signature: t.signature.algorithm,
    issuer: Buffer.from(AsnConvert.serialize(t.issuer)).toString('hex'),
    subject: Buffer.from(AsnConvert.serialize(t.subject)).toString('hex'),
    spki: Buffer.from(AsnConvert.serialize(t.subjectPublicKeyInfo)).toString('hex'),
    extensions: (t.extensions ?? []).filter((e) => e.extnID !== '2.5.29.14').map((e) => [e.extnID, e.critical, Buffer.from(e.extnValue.buffer).toString('hex')]),
  };
}

describe('leaf template', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-tpl-'));
    const der = await buildCaCertificate({
      trustDomain: td,
      publicKey: caSigner.publicKey,
      subject: { organization: 'keel', commonName: 'example.org X.509 CA 1' },
      serial: randomSerial(),
      notBeforeMs: Date.UTC(2029, 0, 1),
      notAfterMs: Date.UTC(2031, 0, 1),
      issuer: { selfSigned: caSigner },
    });
    ca = readCaCertificate(der);
    template = new LeafTemplate({ algorithm: 'ES256', issuerNameDer: ca.subjectNameDer, issuerKeyId: ca.subjectKeyId, organization: 'keel' });
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('encodes the TBS byte for byte as the generic asn1-x509 builder does, given the same fields', () => {
    for (const dnsNames of [[], ['a.example.org'], ['a.example.org', 'b.example.org', '*.c.example.org']]) {
      const f = fields({ dnsNames });
      expect(template.buildTbs(f).toString('hex')).toBe(genericTbs(f, ca.subjectNameDer, ca.subjectKeyId).toString('hex'));
    }
  });

  it('has the same shape as the generic build apart from serial, SKI and validity', () => {
    const a = template.buildTbs(fields());
    const b = genericTbs(fields({ notBeforeMs: Date.UTC(2031, 5, 5), notAfterMs: Date.UTC(2060, 1, 1) }), ca.subjectNameDer, ca.subjectKeyId);
    expect(shapeOf(a)).toEqual(shapeOf(b));
  });

  it('writes UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280 §4.1.2.5)', () => {
    expect(encodeTime(Date.UTC(2049, 11, 31, 23, 59, 59)).toString('latin1')).toBe('\x17\x0d491231235959Z');
    expect(encodeTime(Date.UTC(2050, 0, 1, 0, 0, 0)).toString('latin1')).toBe('\x18\x0f20500101000000Z');
    expect(encodeTime(Date.UTC(1999, 0, 1, 0, 0, 0, 999)).toString('latin1')).toBe('\x17\x0d990101000000Z');
    const f = fields({ notBeforeMs: Date.UTC(2049, 6, 1), notAfterMs: Date.UTC(2050, 6, 1) });
    const t = AsnConvert.parse(template.buildTbs(f), TBSCertificate);
    expect(t.validity.notBefore.utcTime?.getTime()).toBe(Date.UTC(2049, 6, 1));
    expect(t.validity.notAfter.generalTime?.getTime()).toBe(Date.UTC(2050, 6, 1));
  });

  it('signs into a certificate Node, asn1-x509, openssl and the SPIFFE leaf rules accept', async () => {
    const f = fields();
    const tbs = template.buildTbs(f);
    const der = template.wrap(tbs, await caSigner.sign(tbs));
    const x = new X509Certificate(der);
    expect(x.verify(caSigner.publicKey)).toBe(true);
    expect(x.checkIssued(ca.x509)).toBe(true);
    expect(x.subjectAltName).toBe('URI:spiffe://example.org/ns/prod/sa/web, DNS:web.example.org, DNS:web');
    expect(x.serialNumber).toBe(f.serial.toString('hex').toUpperCase());
    expect(x.publicKey.export({ format: 'der', type: 'spki' }).equals(createPublicKey(leafKey).export({ format: 'der', type: 'spki' }))).toBe(true);
    expect(x.ca).toBe(false);
    const parsed = AsnConvert.parse(der, Certificate);
    expect(Buffer.from(parsed.tbsCertificate.serialNumber).equals(f.serial)).toBe(true);
    expect(checkX509SvidLeaf(x).toString()).toBe('spiffe://example.org/ns/prod/sa/web');

    await writeFile(join(dir, 'leaf.pem'), toPem(der));
    await writeFile(join(dir, 'ca.pem'), toPem(ca.der));
    const { stdout } = await run('openssl', ['x509', '-in', join(dir, 'leaf.pem'), '-noout', '-text']);
    expect(stdout).toMatch(/X509v3 Key Usage: critical\s+Digital Signature, Key Encipherment, Key Agreement/);
    expect(stdout).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(stdout).toMatch(/X509v3 Extended Key Usage:\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(stdout).toMatch(/Subject: O\s?=\s?keel, CN\s?=\s?web.example.org/);
    const ski = f.subjectKeyId.toString('hex').toUpperCase().match(/../g)!.join(':');
    expect(stdout).toContain(ski);
    const verified = await run('openssl', ['verify', '-attime', String(Date.UTC(2030, 0, 2, 3, 30) / 1000), '-CAfile', join(dir, 'ca.pem'), join(dir, 'leaf.pem')]);
    expect(verified.stdout).toContain('leaf.pem: OK');
  });

  it('property: DER lengths stay right for any SPIFFE ID and DNS-name count (short, 1-byte and 2-byte lengths)', () => {
    const seg = fc.stringMatching(/^[a-zA-Z0-9._-]{1,60}$/).filter((s) => s !== '.' && s !== '..');
    const dns = fc.stringMatching(/^[a-z0-9]{1,40}(\.[a-z0-9]{1,40}){0,3}$/);
    fc.assert(
      fc.property(fc.array(seg, { minLength: 1, maxLength: 30 }), fc.array(dns, { maxLength: 20 }), (segs, names) => {
        const spiffeId = `spiffe://example.org/${segs.join('/')}`;
        const f = fields({ spiffeId, dnsNames: names });
        const tbs = template.buildTbs(f);
        expect(tbs.equals(genericTbs(f, ca.subjectNameDer, ca.subjectKeyId))).toBe(true);
        const x = new X509Certificate(template.wrap(tbs, Buffer.alloc(64, 1)));
        expect(x.subjectAltName?.split(', ')[0]).toBe(`URI:${spiffeId}`);
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a serial that would not be a 16-byte positive INTEGER', () => {
    expect(() => template.buildTbs(fields({ serial: Buffer.alloc(16, 0xff) }))).toThrow(RangeError);
    expect(() => template.buildTbs(fields({ serial: Buffer.concat([Buffer.from([0]), Buffer.alloc(15, 1)]) }))).toThrow(RangeError);
  });

  it('serials are 16 bytes, positive, minimal, and distinct', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const s = randomSerial();
      expect(s).toHaveLength(16);
      expect(s[0]! & 0x80).toBe(0);
      expect(s[0]).not.toBe(0);
      seen.add(s.toString('hex'));
    }
    expect(seen.size).toBe(2000);
  });
});
