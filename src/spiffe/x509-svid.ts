/**
 * X509-SVID verification (standards/X509-SVID.md): the leaf rules of §3.1,
 * §4 and §5.2, then RFC 5280 path validation to an authority in the bundle of
 * the leaf's own trust domain.
 */
import { X509Certificate } from 'node:crypto';
import { X509SvidError, InvalidSpiffeIdError, type X509SvidRule } from './errors.js';
import { SpiffeId, type TrustDomain } from './id.js';
import { DerSplitError, parseDerCertificates } from './der.js';
import type { BundleSource } from './bundle.js';
import {
  hasKeyUsage,
  KEY_USAGE,
  OID_CLIENT_AUTH,
  OID_SERVER_AUTH,
  readCertificateProfile,
  type CertificateProfile,
  type NameSubtree,
} from './x509-profile.js';

/** Longest path (leaf + intermediates + root) we follow; SPIFFE deployments use 2–4. */
const MAX_PATH = 8;

export interface VerifiedX509Svid {
  readonly id: SpiffeId;
  /** leaf, intermediates, then the bundle authority the path ends in. */
  readonly verifiedChain: readonly X509Certificate[];
}

function fail(rule: X509SvidRule, detail: string): never {
  throw new X509SvidError(rule, detail);
}

function profileOf(cert: X509Certificate, what: string): CertificateProfile {
  try {
    return readCertificateProfile(cert);
  } catch (err) {
    return fail('malformed-chain', `${what} has malformed extensions: ${(err as Error).message}`);
  }
}

function idFromProfile(p: CertificateProfile): SpiffeId {
  if (p.uris.length === 0) fail('no-uri-san', 'the certificate has no URI SAN');
  if (p.uris.length > 1) fail('multiple-uri-sans', `the certificate has ${p.uris.length} URI SANs, an SVID has exactly one`);
  try {
    return SpiffeId.parse(p.uris[0] as string);
  } catch (err) {
    if (err instanceof InvalidSpiffeIdError) fail('invalid-spiffe-id', err.message);
    throw err;
  }
}

/** The SPIFFE ID of a certificate: its single URI SAN. Throws X509SvidError otherwise. */
export function spiffeIdFromCertificate(cert: X509Certificate): SpiffeId {
  return idFromProfile(profileOf(cert, 'the certificate'));
}

/**
 * The leaf rules alone, without path validation: the CA runs this over what it
 * has just issued; the verifier runs it first. Returns the leaf's SPIFFE ID.
 */
export function checkX509SvidLeaf(leaf: X509Certificate): SpiffeId {
  return checkLeafProfile(profileOf(leaf, 'the leaf'));
}

function checkLeafProfile(p: CertificateProfile): SpiffeId {
  const id = idFromProfile(p);
  if (id.isTrustDomainId) fail('leaf-id-without-path', `leaf SPIFFE ID ${id} has no path`);
  // RFC 5280 §4.1.2.6, X509-SVID §3.1: with no subject the SAN carries the name and must be critical.
  if (p.subjectEmpty && !p.sanCritical) fail('san-not-critical', 'the subject is empty but the SAN extension is not critical');
  if (p.basicConstraints?.cA) fail('leaf-is-ca', 'the leaf has cA=true');
  if (!p.keyUsage) fail('leaf-no-key-usage', 'the leaf has no key usage extension');
  if (!p.keyUsage.critical) fail('leaf-key-usage-not-critical', 'the key usage extension of the leaf is not critical');
  if (!hasKeyUsage(p, KEY_USAGE.digitalSignature)) fail('leaf-no-digital-signature', 'the leaf key usage lacks digitalSignature');
  if (hasKeyUsage(p, KEY_USAGE.keyCertSign)) fail('leaf-key-cert-sign', 'the leaf key usage has keyCertSign');
  if (hasKeyUsage(p, KEY_USAGE.cRLSign)) fail('leaf-crl-sign', 'the leaf key usage has cRLSign');
  if (p.extKeyUsage) {
    if (!p.extKeyUsage.oids.includes(OID_SERVER_AUTH)) fail('leaf-eku-missing-server-auth', 'the leaf EKU lacks id-kp-serverAuth');
    if (!p.extKeyUsage.oids.includes(OID_CLIENT_AUTH)) fail('leaf-eku-missing-client-auth', 'the leaf EKU lacks id-kp-clientAuth');
  }
  if (p.unknownCritical.length > 0) fail('unknown-critical-extension', `the leaf has unprocessed critical extensions ${p.unknownCritical.join(', ')}`);
  return id;
}

function checkValidity(p: CertificateProfile, now: Date, what: string, toleranceMs = 0): void {
  const t = now.getTime();
  const tol = toleranceMs > 0 ? ` (with a clock tolerance of ${Math.round(toleranceMs / 1000)}s)` : '';
  if (t < p.notBefore.getTime() - toleranceMs) fail('not-yet-valid', `${what} is not valid before ${p.notBefore.toISOString()}${tol}`);
  if (t > p.notAfter.getTime() + toleranceMs) fail('expired', `${what} expired at ${p.notAfter.toISOString()}${tol}`);
}

/** What a certificate must be to sign another in the path (RFC 5280 §6.1.4, X509-SVID §3.2/§4.3). */
function checkIssuerProfile(p: CertificateProfile, what: string): void {
  if (!p.basicConstraints?.cA) fail('issuer-not-ca', `${what} is not a CA (cA=false or no basic constraints)`);
  if (p.keyUsage) {
    if (!hasKeyUsage(p, KEY_USAGE.keyCertSign)) fail('issuer-no-key-cert-sign', `${what} key usage lacks keyCertSign`);
  }
  if (p.unknownCritical.length > 0) fail('unknown-critical-extension', `${what} has unprocessed critical extensions ${p.unknownCritical.join(', ')}`);
  // A signing certificate that carries a SPIFFE ID names a trust domain, never a workload.
  if (p.uris.length === 1 && p.uris[0]?.startsWith('spiffe://')) {
    let id: SpiffeId | undefined;
    try {
      id = SpiffeId.parse(p.uris[0]);
    } catch {
      id = undefined;
    }
    if (id && !id.isTrustDomainId) fail('issuer-id-has-path', `${what} carries the SPIFFE ID ${id}, which has a path`);
  }
}

function intermediateProfile(p: CertificateProfile, what: string): void {
  checkIssuerProfile(p, what);
  // Intermediates in the chain are SVID signing certificates: key usage present and critical (§4.3).
  if (!p.keyUsage) fail('issuer-no-key-cert-sign', `${what} has no key usage extension`);
  if (!p.keyUsage.critical) fail('issuer-key-usage-not-critical', `${what} key usage is not critical`);
}

function hostOfUri(uri: string): string | undefined {
  try {
    const u = new URL(uri);
    return u.hostname === '' ? undefined : u.hostname.toLowerCase();
  } catch {
    return undefined;
  }
}

function subtreeMatches(tree: NameSubtree, name: string, kind: 'uri' | 'dns'): boolean {
  if (tree.kind !== kind) return false;
  const c = tree.value.toLowerCase();
  const host = kind === 'uri' ? hostOfUri(name) : name.toLowerCase();
  if (host === undefined) return false;
  // RFC 5280 §4.2.1.10: a URI constraint starting with '.' means any host below it;
  // otherwise the host exactly. A DNS constraint matches the name and names below it.
  if (kind === 'uri' && c.startsWith('.')) return host.endsWith(c);
  if (kind === 'dns') return host === c || host.endsWith(c.startsWith('.') ? c : '.' + c);
  return host === c;
}

function checkNameConstraints(ca: CertificateProfile, below: readonly CertificateProfile[], what: string): void {
  const nc = ca.nameConstraints;
  if (!nc) return;
  for (const t of [...nc.permitted, ...nc.excluded]) {
    // Fail closed: forms we do not evaluate (IP, email, directory names) might be what keeps a name out.
    if (t.kind === 'unsupported') fail('name-constraints', `${what} has a ${t.form} name constraint, which keel does not evaluate`);
  }
  for (const p of below) {
    for (const [kind, names] of [['uri', p.uris], ['dns', p.dnsNames]] as const) {
      const permitted = nc.permitted.filter((t) => t.kind === kind);
      for (const name of names) {
        if (permitted.length > 0 && !permitted.some((t) => subtreeMatches(t, name, kind))) {
          fail('name-constraints', `${name} is outside the names ${what} permits`);
        }
        if (nc.excluded.some((t) => subtreeMatches(t, name, kind))) fail('name-constraints', `${name} is a name ${what} excludes`);
      }
    }
  }
}

function isSelfIssued(c: X509Certificate): boolean {
  return c.subject === c.issuer;
}

/** `issuer` really signed `cert`: RFC 5280 name linkage (with key identifiers) and the signature. */
function signedBy(cert: X509Certificate, issuer: X509Certificate): 'ok' | 'name' | 'signature' {
  if (cert.issuer !== issuer.subject) return 'name';
  let sigOk = false;
  try {
    sigOk = cert.verify(issuer.publicKey);
  } catch {
    sigOk = false;
  }
  if (!sigOk) return 'signature';
  return 'ok';
}

function toChain(chain: readonly X509Certificate[] | Uint8Array): X509Certificate[] {
  if (chain instanceof Uint8Array) {
    try {
      return parseDerCertificates(chain, MAX_PATH * 2);
    } catch (err) {
      if (err instanceof DerSplitError) fail('malformed-chain', err.message);
      throw err;
    }
  }
  if (!Array.isArray(chain) || chain.some((c) => !(c instanceof X509Certificate))) {
    fail('malformed-chain', 'the chain must be X509Certificate objects or concatenated DER');
  }
  if (chain.length > MAX_PATH * 2) fail('chain-too-long', `the chain has ${chain.length} certificates`);
  return [...chain];
}

/**
 * Verifies an X509-SVID chain (leaf first, then intermediates) against the
 * bundle of the leaf's trust domain. Throws X509SvidError naming the rule broken.
 */
export function verifyX509Svid(
  chain: readonly X509Certificate[] | Uint8Array,
  bundles: BundleSource,
  opts: {
    now?: Date;
    /** Clock skew tolerated (ms): every certificate is accepted this long outside its validity period. */
    clockToleranceMs?: number;
  } = {},
): VerifiedX509Svid {
  const now = opts.now ?? new Date();
  const tolerance = Math.max(0, opts.clockToleranceMs ?? 0);
  const certs = toChain(chain);
  const leaf = certs[0];
  if (!leaf) return fail('empty-chain', 'the chain is empty');
  const leafProfile = profileOf(leaf, 'the leaf');
  const id = checkLeafProfile(leafProfile);

  const td: TrustDomain = id.trustDomain;
  const bundle = bundles.bundleFor(td);
  if (!bundle || bundle.x509Authorities.length === 0) {
    fail('no-bundle-for-trust-domain', `no X.509 authorities for trust domain ${td.name}`);
  }
  checkValidity(leafProfile, now, 'the leaf', tolerance);

  const intermediates = certs.slice(1);
  const roots = bundle.x509Authorities;
  const profiles = new Map<X509Certificate, CertificateProfile>([[leaf, leafProfile]]);
  const profile = (c: X509Certificate, what: string): CertificateProfile => {
    let p = profiles.get(c);
    if (!p) {
      p = profileOf(c, what);
      profiles.set(c, p);
    }
    return p;
  };

  // Depth-first path building. The first problem met is kept to report if no path is found,
  // so a chain that fails for one reason says which.
  let firstProblem: X509SvidError | undefined;
  // Bounds the work an adversarial chain (many certificates sharing one name and key) can cause.
  let linksLeft = 64;
  const extend = (path: X509Certificate[]): X509Certificate[] | undefined => {
    const current = path[path.length - 1] as X509Certificate;
    if (path.length > MAX_PATH) {
      firstProblem ??= new X509SvidError('chain-too-long', `no path of at most ${MAX_PATH} certificates`);
      return undefined;
    }
    const candidates: [X509Certificate, boolean][] = [
      ...roots.map((r): [X509Certificate, boolean] => [r, true]),
      ...intermediates.filter((c) => !path.includes(c)).map((c): [X509Certificate, boolean] => [c, false]),
    ];
    for (const [cand, isRoot] of candidates) {
      if (current.issuer !== cand.subject) continue;
      if (--linksLeft < 0) {
        firstProblem ??= new X509SvidError('chain-too-long', 'path building gave up: too many candidate issuers');
        return undefined;
      }
      const link = signedBy(current, cand);
      if (link === 'name') continue;
      const what = isRoot ? `bundle authority ${cand.subject || cand.fingerprint256}` : `intermediate ${cand.subject || cand.fingerprint256}`;
      try {
        if (link === 'signature') fail('bad-signature', `the signature of ${path.length === 1 ? 'the leaf' : 'a chain certificate'} does not verify with ${what}`);
        const p = profile(cand, what);
        if (isRoot) checkIssuerProfile(p, what);
        else intermediateProfile(p, what);
        if (!current.checkIssued(cand)) fail('no-issuer', `${what} does not issue the certificate below it (key identifiers or key usage)`);
        checkValidity(p, now, what, tolerance);
        // pathLenConstraint counts the non-self-issued intermediates below this CA (RFC 5280 §6.1.4 (l)/(m)).
        const below = path.slice(1).filter((c) => !isSelfIssued(c)).length;
        if (p.basicConstraints?.pathLen !== undefined && below > p.basicConstraints.pathLen) {
          fail('path-length-exceeded', `${what} allows ${p.basicConstraints.pathLen} intermediates below it, the path has ${below}`);
        }
        checkNameConstraints(p, path.map((c) => profile(c, 'a chain certificate')), what);
      } catch (err) {
        if (!(err instanceof X509SvidError)) throw err;
        firstProblem ??= err;
        continue;
      }
      const next = [...path, cand];
      if (isRoot) return next;
      const done = extend(next);
      if (done) return done;
    }
    return undefined;
  };

  const verifiedChain = extend([leaf]);
  if (!verifiedChain) {
    throw firstProblem ?? new X509SvidError('no-issuer', `no path from the leaf to an authority of trust domain ${td.name}`);
  }
  return { id, verifiedChain };
}

/** A CA certificate accepted through key rollover, and the bundle authority that signed it. */
export interface EndorsedAuthority {
  readonly authority: X509Certificate;
  readonly endorsedBy: X509Certificate;
}

/**
 * Key rollover (the "new with old" certificate of RFC 4210 §4.4): among
 * `candidates`, the CA certificates of `td` that an authority of its bundle
 * signed, for a verifier whose bundle predates a CA rotation. Whoever holds a
 * bundle authority's key can already sign any SVID of the trust domain, so
 * accepting a CA it vouches for grants that key nothing new: the signer's
 * pathLenConstraint (0 in keel's CAs, which is about X.509 paths of
 * intermediates) is not consulted, but everything else is: the endorsed
 * certificate names exactly the trust domain and is a CA; both it and its
 * signer are within their validity; the signer's name constraints permit it.
 * Use the result as anchors for one verification, until the real bundle is
 * fetched over the connection they authenticated.
 */
export function endorsedAuthorities(
  candidates: readonly X509Certificate[],
  bundles: BundleSource,
  td: TrustDomain,
  opts: { now?: Date; clockToleranceMs?: number } = {},
): EndorsedAuthority[] {
  const now = opts.now ?? new Date();
  const tolerance = Math.max(0, opts.clockToleranceMs ?? 0);
  const roots = bundles.bundleFor(td)?.x509Authorities ?? [];
  const out: EndorsedAuthority[] = [];
  for (const c of candidates.slice(0, MAX_PATH)) {
    let p: CertificateProfile;
    try {
      p = profileOf(c, 'the endorsed CA');
      intermediateProfile(p, 'the endorsed CA');
      checkValidity(p, now, 'the endorsed CA', tolerance);
    } catch (e) {
      if (e instanceof X509SvidError) continue;
      throw e;
    }
    if (p.uris.length !== 1 || p.uris[0] !== td.idString) continue;
    for (const r of roots) {
      if (r.raw.equals(c.raw) || signedBy(c, r) !== 'ok' || !c.checkIssued(r)) continue;
      try {
        const rp = profileOf(r, 'the endorsing authority');
        checkIssuerProfile(rp, 'the endorsing authority');
        checkValidity(rp, now, 'the endorsing authority', tolerance);
        checkNameConstraints(rp, [p], 'the endorsing authority');
      } catch (e) {
        if (e instanceof X509SvidError) continue;
        throw e;
      }
      out.push({ authority: c, endorsedBy: r });
      break;
    }
  }
  return out;
}
