/**
 * What the CA puts in X509-SVIDs and in its own signing certificates so that
 * verifyX509Svid (and go-spiffe, java-spiffe, Envoy) accept them
 * (standards/X509-SVID.md §3–§4, Appendix A). The extension values are
 * pre-encoded DER (the extnValue contents), ready for a prepared TBS template.
 */
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  ExtendedKeyUsage,
  GeneralName,
  KeyUsage,
  SubjectAlternativeName,
  id_ce_basicConstraints,
  id_ce_extKeyUsage,
  id_ce_keyUsage,
  id_ce_subjectAltName,
} from '@peculiar/asn1-x509';
import { KEY_USAGE, OID_CLIENT_AUTH, OID_SERVER_AUTH } from './x509-profile.js';
import { InvalidSpiffeIdError } from './errors.js';
import type { SpiffeId } from './id.js';

const der = (v: object): Buffer => Buffer.from(AsnConvert.serialize(v));

export const EXTENSION_OIDS = Object.freeze({
  basicConstraints: id_ce_basicConstraints,
  keyUsage: id_ce_keyUsage,
  extKeyUsage: id_ce_extKeyUsage,
  subjectAltName: id_ce_subjectAltName,
});

export const X509SvidTemplateRules = Object.freeze({
  leaf: Object.freeze({
    /** The SPIFFE ID must have a non-root path (§3.1). */
    idRequiresPath: true,
    basicConstraints: Object.freeze({ critical: true, cA: false, der: der(new BasicConstraints({ cA: false })) }),
    keyUsage: Object.freeze({
      critical: true,
      /** digitalSignature only: keyEncipherment/keyAgreement are allowed but needless for EC keys and TLS 1.3 (§4.3). */
      bits: KEY_USAGE.digitalSignature,
      required: Object.freeze(['digitalSignature'] as const),
      allowed: Object.freeze(['digitalSignature', 'keyEncipherment', 'keyAgreement'] as const),
      forbidden: Object.freeze(['keyCertSign', 'cRLSign'] as const),
      der: der(new KeyUsage(KEY_USAGE.digitalSignature)),
    }),
    /** SHOULD be present; when present both purposes MUST be (§4.4). */
    extKeyUsage: Object.freeze({
      critical: false,
      oids: Object.freeze([OID_SERVER_AUTH, OID_CLIENT_AUTH] as const),
      der: der(new ExtendedKeyUsage([OID_SERVER_AUTH, OID_CLIENT_AUTH])),
    }),
    /** Exactly one URI SAN; other SAN types (DNS) may be added. Critical when the subject is empty (§3.1). */
    subjectAltName: Object.freeze({ uriCount: 1, criticalWhenSubjectEmpty: true }),
  }),
  ca: Object.freeze({
    /** A signing certificate that carries a SPIFFE ID carries the trust domain ID, no path (§3.2). */
    idRequiresPath: false,
    basicConstraints: Object.freeze({ critical: true, cA: true, der: der(new BasicConstraints({ cA: true })) }),
    keyUsage: Object.freeze({
      critical: true,
      bits: KEY_USAGE.keyCertSign | KEY_USAGE.cRLSign,
      required: Object.freeze(['keyCertSign'] as const),
      allowed: Object.freeze(['keyCertSign', 'cRLSign'] as const),
      forbidden: Object.freeze(['digitalSignature'] as const),
      der: der(new KeyUsage(KEY_USAGE.keyCertSign | KEY_USAGE.cRLSign)),
    }),
    /** Left out: intermediate-CA EKU is processed inconsistently across libraries (§4.4). */
    extKeyUsage: undefined,
    subjectAltName: Object.freeze({ uriCount: 1, criticalWhenSubjectEmpty: true }),
  }),
});

/** basicConstraints for a CA with a path length limit (e.g. 0 for a CA that issues only leaves). */
export function caBasicConstraintsDer(pathLen?: number): Buffer {
  if (pathLen !== undefined && (!Number.isSafeInteger(pathLen) || pathLen < 0)) throw new RangeError('pathLen must be a non-negative integer');
  return der(new BasicConstraints({ cA: true, ...(pathLen !== undefined ? { pathLenConstraint: pathLen } : {}) }));
}

/**
 * The subjectAltName extnValue for an SVID: the SPIFFE ID as the one URI,
 * then any DNS names. `role` checks the path rule of §3.1/§3.2.
 */
export function svidSubjectAltNameDer(id: SpiffeId, role: 'leaf' | 'ca', dnsNames: readonly string[] = []): Buffer {
  if (role === 'leaf' && id.isTrustDomainId) throw new InvalidSpiffeIdError(id.toString(), 'a leaf SVID needs a path', 'path-required');
  if (role === 'ca' && !id.isTrustDomainId) throw new InvalidSpiffeIdError(id.toString(), 'a CA certificate carries a trust domain ID', 'td-id-has-path');
  const names = [new GeneralName({ uniformResourceIdentifier: id.toString() }), ...dnsNames.map((d) => new GeneralName({ dNSName: d }))];
  return der(new SubjectAlternativeName(names));
}
