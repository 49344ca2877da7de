/**
 * EK certificates: unwrapping them from NV, walking their chain to a
 * manufacturer CA, matching them to an EK public area, and the EK hash that
 * names an agent.
 *
 * The chain walk is written out with X509Certificate.verify/checkIssued
 * because EK certificates carry a critical SubjectAltName holding only a
 * directoryName and often an empty subject, which general-purpose path
 * validation treats as unhandled or non-conforming.
 */
import { X509Certificate, createHash, type KeyObject } from 'node:crypto';
import { EkCertificateError } from './errors.js';
import { publicKeyFromTpmtPublic, toTpmtPublic, type TpmtPublic } from './public.js';

/** TCG PC Client "certificate in NV" framing: 0x10 0x01, u16 size, certificate. */
const NV_FRAMING_TAG = 0x1001;
const MAX_CHAIN_DEPTH = 8;

/**
 * The DER certificate in the bytes of an EK certificate NV index, without the
 * optional TCG framing and without the padding some TPMs leave after it.
 */
export function unwrapEkCertificate(nvBytes: Uint8Array): Buffer {
  let b = Buffer.from(nvBytes);
  if (b.length >= 4 && b.readUInt16BE(0) === NV_FRAMING_TAG) {
    const size = b.readUInt16BE(2);
    if (size > b.length - 4) throw new EkCertificateError('malformed', `NV framing claims ${size} bytes, ${b.length - 4} present`);
    b = b.subarray(4, 4 + size);
  }
  if (b.length < 2 || b[0] !== 0x30) throw new EkCertificateError('malformed', 'does not start with a DER SEQUENCE');
  const first = b[1]!;
  let header = 2;
  let length: number;
  if (first < 0x80) length = first;
  else {
    const n = first & 0x7f;
    if (n === 0 || n > 3) throw new EkCertificateError('malformed', 'unsupported DER length form');
    if (b.length < 2 + n) throw new EkCertificateError('malformed', 'truncated DER length');
    length = b.readUIntBE(2, n);
    header += n;
  }
  if (header + length > b.length) throw new EkCertificateError('malformed', `DER SEQUENCE of ${length} bytes, ${b.length - header} present`);
  return Buffer.from(b.subarray(0, header + length));
}

type CertInput = X509Certificate | Uint8Array | string;

function toCert(c: CertInput): X509Certificate {
  if (c instanceof X509Certificate) return c;
  try {
    return new X509Certificate(typeof c === 'string' ? c : Buffer.from(c));
  } catch (e) {
    throw new EkCertificateError('malformed', `not an X.509 certificate (${(e as Error).message})`);
  }
}

function checkValidity(c: X509Certificate, now: Date, what: string): void {
  if (now < new Date(c.validFrom)) throw new EkCertificateError('not-yet-valid', `${what} is valid from ${c.validFrom}`);
  if (now > new Date(c.validTo)) throw new EkCertificateError('expired', `${what} expired ${c.validTo}`);
}

export interface EkChainOptions {
  /** Manufacturer CA certificates trusted as anchors (X509Certificate or PEM). */
  readonly roots: readonly (X509Certificate | string)[];
  /** Issuing CAs that may sit between an anchor and the EK certificate. */
  readonly intermediates?: readonly (X509Certificate | string)[];
  readonly now?: Date;
}

export interface VerifiedEkCertificate {
  readonly certificate: X509Certificate;
  /** From the EK certificate up to and including the trust anchor. */
  readonly chain: readonly X509Certificate[];
}

/**
 * Validates an EK certificate (DER, or an X509Certificate) up to one of the
 * configured manufacturer roots: each signature, each validity period, and
 * that every issuer is a CA.
 */
export function verifyEkCertificate(cert: X509Certificate | Uint8Array, opts: EkChainOptions): VerifiedEkCertificate {
  const leaf = toCert(cert);
  const now = opts.now ?? new Date();
  const roots = opts.roots.map(toCert);
  const pool = [...(opts.intermediates ?? []).map(toCert), ...roots];
  const isRoot = (c: X509Certificate): boolean => roots.some((r) => r.raw.equals(c.raw));

  checkValidity(leaf, now, 'the EK certificate');
  const chain = [leaf];
  let current = leaf;
  for (let depth = 0; depth <= MAX_CHAIN_DEPTH; depth++) {
    if (isRoot(current)) return { certificate: leaf, chain };
    const named = pool.filter((c) => c !== current && !c.raw.equals(current.raw) && current.checkIssued(c));
    if (named.length === 0) throw new EkCertificateError('untrusted', `no configured CA issued "${current.issuer}"`);
    const issuer = named.find((c) => current.verify(c.publicKey));
    if (!issuer) throw new EkCertificateError('signature', `no CA named "${current.issuer}" signed the certificate`);
    if (!issuer.ca) throw new EkCertificateError('issuer-not-ca', `"${issuer.subject}" is not a CA`);
    checkValidity(issuer, now, `CA "${issuer.subject}"`);
    chain.push(issuer);
    current = issuer;
  }
  throw new EkCertificateError('path-too-long', `more than ${MAX_CHAIN_DEPTH} CAs`);
}

function ekKey(ek: TpmtPublic | Uint8Array | KeyObject): KeyObject {
  if (ek instanceof Uint8Array) return publicKeyFromTpmtPublic(toTpmtPublic(ek));
  if ('type' in ek && typeof ek.type === 'number') return publicKeyFromTpmtPublic(ek as TpmtPublic);
  return ek as KeyObject;
}

/** Whether the certificate certifies this EK (the same public key). */
export function ekCertificateMatches(cert: X509Certificate | Uint8Array, ekPublic: TpmtPublic | Uint8Array | KeyObject): boolean {
  return toCert(cert).publicKey.equals(ekKey(ekPublic));
}

/**
 * Hex SHA-256 of the EK public key as PKIX SubjectPublicKeyInfo DER: the agent
 * ID and the allow-list key (the same hash SPIRE's TPM plugins use).
 */
export function ekPublicHash(ekPublic: TpmtPublic | KeyObject): string {
  const der = ekKey(ekPublic).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex');
}
