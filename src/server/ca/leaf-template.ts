/**
 * X.509-SVID leaves from a template prepared once per CA key.
 *
 * A generic builder spends most of its time assembling ASN.1 objects; here
 * everything fixed for one CA key (version, signature algorithm, issuer name,
 * AKI, and the constant extensions) is DER-encoded once, and each certificate
 * only encodes what varies: serial, validity, subject CN, SPKI, SKI, SAN.
 *
 * Leaf profile (X509-SVID standard, shaped like SPIRE's leaves):
 *   subject        O=<organization>[, CN=<first DNS name>]
 *   keyUsage       critical: digitalSignature, keyEncipherment, keyAgreement
 *   extKeyUsage    serverAuth, clientAuth
 *   basicConstraints critical: cA=false
 *   SKI            SHA-1 of the subject key bits (RFC 5280 method 1)
 *   AKI            keyIdentifier = the CA's SKI
 *   subjectAltName exactly one URI (the SPIFFE ID), then the DNS names
 */
import type { SignatureAlgorithm } from '../../spiffe/signer.js';
import { TAG, tlv, seq, oid, octetString, bitString } from './der.js';
import { signatureAlgorithmIdentifier, x509SignatureValue } from './algorithms.js';

export const EXT_OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  nameConstraints: '2.5.29.30',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  organizationName: '2.5.4.10',
  commonName: '2.5.4.3',
} as const;

const TRUE = Buffer.from([0x01, 0x01, 0xff]);
const CN_OID = oid(EXT_OID.commonName);
const SAN_OID = oid(EXT_OID.subjectAltName);
const SERIAL_HEADER = Buffer.from([TAG.INTEGER, 16]);

export function extension(extnId: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(extnId), TRUE, octetString(value)) : seq(oid(extnId), octetString(value));
}

/** A one-attribute RDN, UTF8String valued. */
export function rdn(attrOid: string, value: string): Buffer {
  return tlv(TAG.SET, seq(oid(attrOid), tlv(TAG.UTF8_STRING, Buffer.from(value, 'utf8'))));
}

const pad2 = (n: number): string => (n < 10 ? '0' : '') + n;

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, whole seconds, Z. */
export function encodeTime(epochMs: number): Buffer {
  const d = new Date(Math.floor(epochMs / 1000) * 1000);
  const y = d.getUTCFullYear();
  if (y < 1950 || y > 9999) throw new RangeError(`year ${y} cannot be encoded in a certificate`);
  const rest = pad2(d.getUTCMonth() + 1) + pad2(d.getUTCDate()) + pad2(d.getUTCHours()) + pad2(d.getUTCMinutes()) + pad2(d.getUTCSeconds()) + 'Z';
  return y < 2050
    ? tlv(TAG.UTC_TIME, Buffer.from(pad2(y % 100) + rest, 'latin1'))
    : tlv(TAG.GENERALIZED_TIME, Buffer.from(String(y) + rest, 'latin1'));
}

export interface LeafFields {
  /** 16 bytes, top bit clear, first byte non-zero (so the INTEGER is exactly 16 bytes). */
  readonly serial: Buffer;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  readonly spiffeId: string;
  readonly dnsNames: readonly string[];
  readonly spkiDer: Buffer;
  readonly subjectKeyId: Buffer;
}

export interface LeafTemplateParams {
  readonly algorithm: SignatureAlgorithm;
  /** The issuer's subject Name, DER, byte for byte as it is in the CA certificate. */
  readonly issuerNameDer: Buffer;
  /** The CA certificate's SKI, which becomes the leaf's AKI. */
  readonly issuerKeyId: Buffer;
  readonly organization: string;
}

export class LeafTemplate {
  readonly algorithm: SignatureAlgorithm;
  private readonly version = Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]);
  private readonly sigAlg: Buffer;
  private readonly issuer: Buffer;
  private readonly orgRdn: Buffer;
  private readonly orgOnlySubject: Buffer;
  /** keyUsage, extKeyUsage, basicConstraints, AKI: the same for every leaf of this CA key. */
  private readonly fixedExtensions: Buffer;
  private readonly skiPrefix: Buffer;

  constructor(p: LeafTemplateParams) {
    this.algorithm = p.algorithm;
    this.sigAlg = signatureAlgorithmIdentifier(p.algorithm);
    this.issuer = p.issuerNameDer;
    this.orgRdn = rdn(EXT_OID.organizationName, p.organization);
    this.orgOnlySubject = seq(this.orgRdn);
    // digitalSignature(0) | keyEncipherment(2) | keyAgreement(4) = 1010 1000, 3 unused bits.
    const keyUsage = extension(EXT_OID.keyUsage, true, Buffer.from([TAG.BIT_STRING, 0x02, 0x03, 0xa8]));
    const eku = extension(EXT_OID.extKeyUsage, false, seq(oid(EXT_OID.serverAuth), oid(EXT_OID.clientAuth)));
    // cA=false is the DEFAULT, so DER leaves the SEQUENCE empty.
    const basic = extension(EXT_OID.basicConstraints, true, seq());
    const aki = extension(EXT_OID.authorityKeyIdentifier, false, seq(tlv(0x80, p.issuerKeyId)));
    this.fixedExtensions = Buffer.concat([keyUsage, eku, basic, aki]);
    // SEQ { OID ski, OCTET STRING { OCTET STRING(20) } }: only the 20 bytes vary.
    const skiOid = oid(EXT_OID.subjectKeyIdentifier);
    this.skiPrefix = Buffer.concat([Buffer.from([TAG.SEQUENCE, skiOid.length + 2 + 2 + 20]), skiOid, Buffer.from([TAG.OCTET_STRING, 22, TAG.OCTET_STRING, 20])]);
  }

  /** The DER TBSCertificate for one leaf. */
  buildTbs(f: LeafFields): Buffer {
    if (f.serial.length !== 16 || (f.serial[0]! & 0x80) !== 0 || f.serial[0] === 0) throw new RangeError('serial must be 16 bytes, top bit clear, first byte non-zero');
    if (f.subjectKeyId.length !== 20) throw new RangeError('SKI must be 20 bytes');
    const cn = f.dnsNames[0];
    const subject = cn === undefined ? this.orgOnlySubject : seq(this.orgRdn, tlv(TAG.SET, seq(CN_OID, tlv(TAG.UTF8_STRING, Buffer.from(cn, 'latin1')))));
    const sanParts: Buffer[] = [tlv(0x86, Buffer.from(f.spiffeId, 'latin1'))];
    for (const d of f.dnsNames) sanParts.push(tlv(0x82, Buffer.from(d, 'latin1')));
    const san = seq(SAN_OID, octetString(seq(...sanParts)));
    const extensions = tlv(0xa3, seq(this.fixedExtensions, this.skiPrefix, f.subjectKeyId, san));
    return seq(
      this.version,
      SERIAL_HEADER,
      f.serial,
      this.sigAlg,
      this.issuer,
      seq(this.time(f.notBeforeMs), this.time(f.notAfterMs)),
      subject,
      f.spkiDer,
      extensions,
    );
  }

  /** Many leaves a second share their validity times: remember the last few encodings. */
  private readonly times = new Map<number, Buffer>();
  private time(ms: number): Buffer {
    const s = Math.floor(ms / 1000);
    let t = this.times.get(s);
    if (!t) {
      if (this.times.size >= 8) this.times.clear();
      t = encodeTime(ms);
      this.times.set(s, t);
    }
    return t;
  }

  /** Certificate ::= SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature }. */
  wrap(tbs: Buffer, rawSignature: Buffer): Buffer {
    return seq(tbs, this.sigAlg, bitString(x509SignatureValue(this.algorithm, rawSignature)));
  }
}
