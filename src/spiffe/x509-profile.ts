/**
 * The parts of an X.509 certificate the SPIFFE rules look at, read from the
 * DER with @peculiar/asn1-x509 (Node's X509Certificate folds SANs into one
 * string and has no key usage bits or criticality).
 */
import { X509Certificate } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  Certificate,
  ExtendedKeyUsage,
  GeneralName,
  KeyUsage,
  KeyUsageFlags,
  NameConstraints,
  SubjectAlternativeName,
  id_ce_authorityKeyIdentifier,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_keyUsage,
  id_ce_nameConstraints,
  id_ce_subjectAltName,
  id_ce_subjectKeyIdentifier,
} from '@peculiar/asn1-x509';

export const OID_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
export const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/** Key usage bits as named in RFC 5280 §4.2.1.3. */
export const KEY_USAGE = {
  digitalSignature: KeyUsageFlags.digitalSignature,
  nonRepudiation: KeyUsageFlags.nonRepudiation,
  keyEncipherment: KeyUsageFlags.keyEncipherment,
  dataEncipherment: KeyUsageFlags.dataEncipherment,
  keyAgreement: KeyUsageFlags.keyAgreement,
  keyCertSign: KeyUsageFlags.keyCertSign,
  cRLSign: KeyUsageFlags.cRLSign,
  encipherOnly: KeyUsageFlags.encipherOnly,
  decipherOnly: KeyUsageFlags.decipherOnly,
} as const;

/** One GeneralSubtree of a name constraint, in the forms we can evaluate. */
export type NameSubtree = { kind: 'uri' | 'dns'; value: string } | { kind: 'unsupported'; form: string };

export interface CertificateProfile {
  readonly cert: X509Certificate;
  readonly uris: readonly string[];
  readonly sanCritical: boolean;
  readonly dnsNames: readonly string[];
  readonly subjectEmpty: boolean;
  /** undefined when the extension is absent. */
  readonly basicConstraints?: { readonly cA: boolean; readonly pathLen?: number; readonly critical: boolean };
  readonly keyUsage?: { readonly bits: number; readonly critical: boolean };
  readonly extKeyUsage?: { readonly oids: readonly string[]; readonly critical: boolean };
  readonly nameConstraints?: { readonly permitted: readonly NameSubtree[]; readonly excluded: readonly NameSubtree[] };
  /** OIDs of critical extensions this module does not process. */
  readonly unknownCritical: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
}

/** Extensions whose meaning we process; a critical one outside this set makes the certificate unusable (RFC 5280 §4.2). */
const PROCESSED = new Set([
  id_ce_basicConstraints,
  id_ce_keyUsage,
  id_ce_extKeyUsage,
  id_ce_subjectAltName,
  id_ce_nameConstraints,
  id_ce_subjectKeyIdentifier,
  id_ce_authorityKeyIdentifier,
]);

function subtree(name: GeneralName): NameSubtree {
  if (name.uniformResourceIdentifier !== undefined) return { kind: 'uri', value: name.uniformResourceIdentifier };
  if (name.dNSName !== undefined) return { kind: 'dns', value: name.dNSName };
  const form = Object.keys(name).find((k) => (name as unknown as Record<string, unknown>)[k] !== undefined) ?? 'unknown';
  return { kind: 'unsupported', form };
}

/** Throws whatever the ASN.1 layer throws on malformed input; callers wrap it. */
export function readCertificateProfile(cert: X509Certificate): CertificateProfile {
  const asn = AsnConvert.parse(cert.raw, Certificate);
  const tbs = asn.tbsCertificate;
  const uris: string[] = [];
  const dnsNames: string[] = [];
  let sanCritical = false;
  let basicConstraints: CertificateProfile['basicConstraints'];
  let keyUsage: CertificateProfile['keyUsage'];
  let extKeyUsage: CertificateProfile['extKeyUsage'];
  let nameConstraints: CertificateProfile['nameConstraints'];
  const unknownCritical: string[] = [];
  const seen = new Set<string>();

  for (const ext of tbs.extensions ?? []) {
    // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension.
    if (seen.has(ext.extnID)) throw new Error(`extension ${ext.extnID} appears twice`);
    seen.add(ext.extnID);
    const value = ext.extnValue.buffer;
    switch (ext.extnID) {
      case id_ce_subjectAltName: {
        sanCritical = ext.critical;
        for (const name of AsnConvert.parse(value, SubjectAlternativeName)) {
          if (name.uniformResourceIdentifier !== undefined) uris.push(name.uniformResourceIdentifier);
          if (name.dNSName !== undefined) dnsNames.push(name.dNSName);
        }
        break;
      }
      case id_ce_basicConstraints: {
        const bc = AsnConvert.parse(value, BasicConstraints);
        basicConstraints = {
          cA: bc.cA === true,
          ...(bc.pathLenConstraint !== undefined ? { pathLen: bc.pathLenConstraint } : {}),
          critical: ext.critical,
        };
        break;
      }
      case id_ce_keyUsage:
        keyUsage = { bits: AsnConvert.parse(value, KeyUsage).toNumber(), critical: ext.critical };
        break;
      case id_ce_extKeyUsage:
        extKeyUsage = { oids: [...AsnConvert.parse(value, ExtendedKeyUsage)], critical: ext.critical };
        break;
      case id_ce_nameConstraints: {
        const nc = AsnConvert.parse(value, NameConstraints);
        nameConstraints = {
          permitted: [...(nc.permittedSubtrees ?? [])].map((s) => subtree(s.base)),
          excluded: [...(nc.excludedSubtrees ?? [])].map((s) => subtree(s.base)),
        };
        break;
      }
      default:
        if (ext.critical && !PROCESSED.has(ext.extnID)) unknownCritical.push(ext.extnID);
    }
  }

  return {
    cert,
    uris,
    sanCritical,
    dnsNames,
    subjectEmpty: tbs.subject.length === 0,
    ...(basicConstraints ? { basicConstraints } : {}),
    ...(keyUsage ? { keyUsage } : {}),
    ...(extKeyUsage ? { extKeyUsage } : {}),
    ...(nameConstraints ? { nameConstraints } : {}),
    unknownCritical,
    notBefore: tbs.validity.notBefore.getTime(),
    notAfter: tbs.validity.notAfter.getTime(),
  };
}

export function hasKeyUsage(p: CertificateProfile, bit: number): boolean {
  return p.keyUsage !== undefined && (p.keyUsage.bits & bit) !== 0;
}
