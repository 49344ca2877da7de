/**
 * keel's CA certificates: a self-signed root over an HSM key, or an
 * intermediate signed by an upstream CA. Built once per CA key, so clarity
 * beats speed here; the leaf path has its own template.
 *
 * Profile: basicConstraints critical cA=true pathLen=0 (keel issues leaves
 * only), keyUsage critical keyCertSign|cRLSign|digitalSignature, SKI, AKI,
 * SAN URI = the trust domain ID, and a critical URI name constraint limiting
 * the SPIFFE IDs below it to the trust domain.
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import type { Signer } from '../../spiffe/signer.js';
import type { TrustDomain } from '../../spiffe/id.js';
import { TAG, tlv, seq, bitString, readTlv, children, slice, content, smallInteger } from './der.js';
import { signatureAlgorithmIdentifier, x509SignatureValue } from './algorithms.js';
import { EXT_OID, extension, rdn, encodeTime } from './leaf-template.js';
import { subjectKeyIdOf } from './csr.js';

export interface CaIssuer {
  /** DER subject Name of the issuing certificate. */
  readonly nameDer: Buffer;
  /** Its SKI, the new certificate's AKI. */
  readonly keyId: Buffer;
  readonly signer: Signer;
}

export interface CaCertificateParams {
  readonly trustDomain: TrustDomain;
  readonly publicKey: KeyObject;
  readonly subject: { readonly organization: string; readonly commonName: string };
  readonly serial: Buffer;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  /** The CA key's own signer (self-signed), or an upstream issuer. */
  readonly issuer: { readonly selfSigned: Signer } | CaIssuer;
}

export async function buildCaCertificate(p: CaCertificateParams): Promise<Buffer> {
  const spki = p.publicKey.export({ format: 'der', type: 'spki' });
  const ski = subjectKeyIdOf(spki);
  const subject = seq(rdn(EXT_OID.organizationName, p.subject.organization), rdn(EXT_OID.commonName, p.subject.commonName));
  const selfSigned = 'selfSigned' in p.issuer;
  const signer = 'selfSigned' in p.issuer ? p.issuer.selfSigned : p.issuer.signer;
  const issuerName = 'selfSigned' in p.issuer ? subject : p.issuer.nameDer;
  const aki = 'selfSigned' in p.issuer ? ski : p.issuer.keyId;
  const sigAlg = signatureAlgorithmIdentifier(signer.algorithm);
  const tdId = Buffer.from(p.trustDomain.idString, 'latin1');
  const extensions = [
    extension(EXT_OID.basicConstraints, true, seq(Buffer.from([0x01, 0x01, 0xff]), smallInteger(0))),
    // keyCertSign(5) | cRLSign(6) | digitalSignature(0) = 1000 0110, 1 unused bit.
    extension(EXT_OID.keyUsage, true, Buffer.from([TAG.BIT_STRING, 0x02, 0x01, 0x86])),
    extension(EXT_OID.subjectKeyIdentifier, false, tlv(TAG.OCTET_STRING, ski)),
    extension(EXT_OID.authorityKeyIdentifier, false, seq(tlv(0x80, aki))),
    extension(EXT_OID.subjectAltName, false, seq(tlv(0x86, tdId))),
    // permittedSubtrees { GeneralSubtree { uniformResourceIdentifier "<td>" } }: URI
    // constraints match the host, which for spiffe:// URIs is the trust domain.
    extension(EXT_OID.nameConstraints, true, seq(tlv(0xa0, seq(tlv(0x86, Buffer.from(p.trustDomain.name, 'latin1')))))),
  ];
  const tbs = seq(
    Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]),
    tlv(TAG.INTEGER, p.serial),
    sigAlg,
    issuerName,
    seq(encodeTime(p.notBeforeMs), encodeTime(p.notAfterMs)),
    subject,
    spki,
    tlv(0xa3, seq(...extensions)),
  );
  const sig = await signer.sign(tbs);
  const der = seq(tbs, sigAlg, bitString(x509SignatureValue(signer.algorithm, sig)));
  if (selfSigned && !new X509Certificate(der).verify(p.publicKey)) throw new Error('CA self-signature does not verify');
  return der;
}

/** What the CA needs from a certificate it issues under (its own, or an upstream's). */
export interface CaCertificateInfo {
  readonly der: Buffer;
  readonly x509: X509Certificate;
  readonly subjectNameDer: Buffer;
  readonly subjectKeyId: Buffer;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  readonly publicKey: KeyObject;
  readonly selfSigned: boolean;
}

/** Finds the SKI extension's value, or undefined. */
function findSki(der: Buffer, tbsFields: ReturnType<typeof children>): Buffer | undefined {
  const extsWrapper = tbsFields.find((t) => t.tag === 0xa3);
  if (!extsWrapper) return undefined;
  const [exts] = children(der, extsWrapper);
  if (!exts) return undefined;
  for (const ext of children(der, exts)) {
    const parts = children(der, ext);
    const id = parts[0];
    const value = parts[parts.length - 1];
    if (!id || !value) continue;
    if (content(der, id).equals(Buffer.from([0x55, 0x1d, 0x0e]))) {
      const inner = readTlv(der, value.contentStart, value.end);
      return Buffer.from(content(der, inner));
    }
  }
  return undefined;
}

export function readCaCertificate(der: Buffer): CaCertificateInfo {
  const x509 = new X509Certificate(der);
  const cert = readTlv(der, 0);
  const [tbsTlv] = children(der, cert);
  if (!tbsTlv) throw new Error('certificate has no TBS');
  const f = children(der, tbsTlv);
  // version [0], serial, signature, issuer, validity, subject, spki, …
  const subject = f[5];
  const spki = f[6];
  if (!subject || !spki || f[0]?.tag !== 0xa0) throw new Error('certificate is not X.509 v3');
  const publicKey = x509.publicKey;
  return {
    der,
    x509,
    subjectNameDer: Buffer.from(slice(der, subject)),
    subjectKeyId: findSki(der, f) ?? subjectKeyIdOf(Buffer.from(slice(der, spki))),
    notBeforeMs: Date.parse(x509.validFrom),
    notAfterMs: Date.parse(x509.validTo),
    publicKey,
    selfSigned: x509.checkIssued(x509) && x509.verify(publicKey),
  };
}


export { derToPem } from '../../spiffe/der.js';

/** Splits concatenated PEM certificates into DER. */
export function pemToDers(pem: string): Buffer[] {
  const out: Buffer[] = [];
  const re = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/g;
  for (let m = re.exec(pem); m; m = re.exec(pem)) out.push(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
  return out;
}
