import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import fc from 'fast-check';
import {
  BundleSet,
  TrustBundle,
  TrustDomain,
  X509SvidError,
  checkX509SvidLeaf,
  spiffeIdFromCertificate,
  verifyX509Svid,
  type X509SvidRule,
} from '../../src/spiffe/index.js';
import { OpensslPki, caExt, leafExt, type Issued } from './helpers/openssl-pki.js';

const pki = new OpensslPki();
let root: Issued;
let inter: Issued;
let bundle: TrustBundle;
const leaves: Record<string, Issued> = {};
const DAY = 86_400_000;

beforeAll(() => {
  root = pki.root('root', '/O=example.org/CN=root', caExt('spiffe://example.org'));
  inter = pki.issue('inter', root, '/O=example.org/CN=inter', caExt('spiffe://example.org', 'authorityKeyIdentifier = keyid'), 365);
  bundle = TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [root.cert] });
  const leaf = (name: string, ext: string, issuer = inter, subject = `/CN=${name}`) => {
    leaves[name] = pki.issue(name, issuer, subject, ext);
  };
  leaf('good', leafExt());
  leaf('noEku', leafExt({ eku: '' }));
  leaf('twoUris', leafExt({ san: 'subjectAltName = URI:spiffe://example.org/a, URI:spiffe://example.org/b' }));
  leaf('noUri', leafExt({ san: 'subjectAltName = DNS:workload.example.org' }));
  leaf('notSpiffe', leafExt({ san: 'subjectAltName = URI:https://example.org/workload' }));
  leaf('pathless', leafExt({ san: 'subjectAltName = URI:spiffe://example.org' }));
  leaf('caLeaf', leafExt({ bc: 'basicConstraints = critical, CA:TRUE' }));
  leaf('noKu', leafExt({ ku: '' }));
  leaf('kuNotCritical', leafExt({ ku: 'keyUsage = digitalSignature' }));
  leaf('kuNoDigital', leafExt({ ku: 'keyUsage = critical, keyEncipherment' }));
  leaf('kuCertSign', leafExt({ ku: 'keyUsage = critical, digitalSignature, keyCertSign' }));
  leaf('kuCrlSign', leafExt({ ku: 'keyUsage = critical, digitalSignature, cRLSign' }));
  leaf('ekuServerOnly', leafExt({ eku: 'extendedKeyUsage = serverAuth' }));
  leaf('ekuClientOnly', leafExt({ eku: 'extendedKeyUsage = clientAuth' }));
  leaf('unknownCritical', leafExt({ extra: '1.3.6.1.4.1.55555.1 = critical, ASN1:NULL' }));
  leaf('otherTd', leafExt({ san: 'subjectAltName = URI:spiffe://other.org/workload' }));
  leaf('direct', leafExt(), root);
  leaf('emptySubject', leafExt(), inter, '/');
  leaf('emptySubjectCriticalSan', leafExt({ san: 'subjectAltName = critical, URI:spiffe://example.org/workload' }), inter, '/');

  // Intermediates that break one signing-certificate rule, each with a good leaf under it.
  const badInter = (name: string, ext: string, issuer = root) => {
    const ca = pki.issue(`${name}-ca`, issuer, `/O=example.org/CN=${name}`, ext, 365);
    leaves[name] = pki.issue(name, ca, `/CN=${name}-leaf`, leafExt());
    leaves[`${name}-ca`] = ca;
  };
  badInter('interNotCa', 'basicConstraints = critical, CA:FALSE\nkeyUsage = critical, keyCertSign\nsubjectAltName = URI:spiffe://example.org');
  badInter('interNoCertSign', 'basicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature\nsubjectAltName = URI:spiffe://example.org');
  badInter('interWithPath', caExt('spiffe://example.org/not-a-ca'));
  badInter('interNcGood', caExt('spiffe://example.org', 'nameConstraints = critical, permitted;URI:example.org'));
  badInter('interNcOther', caExt('spiffe://example.org', 'nameConstraints = critical, permitted;URI:other.org'));
});

afterAll(() => pki.cleanup());

function refusedWith(rule: X509SvidRule, f: () => unknown): void {
  let caught: unknown;
  try {
    f();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(X509SvidError);
  expect((caught as X509SvidError).rule).toBe(rule);
  expect((caught as X509SvidError).name).toBe('X509SvidError');
}

const chainOf = (name: string): X509Certificate[] => [(leaves[name] as Issued).cert, inter.cert];

describe('verifyX509Svid, a well-formed SVID', () => {
  it('accepts leaf + intermediate against the root, and openssl agrees', () => {
    const { id, verifiedChain } = verifyX509Svid(chainOf('good'), bundle);
    expect(id.toString()).toBe('spiffe://example.org/workload');
    expect(verifiedChain.map((c) => c.fingerprint256)).toEqual([leaves.good!.cert, inter.cert, root.cert].map((c) => c.fingerprint256));
    expect(pki.verify(root, [inter], leaves.good!)).toBe(true);
  });

  it('takes the chain as concatenated DER', () => {
    const der = Buffer.concat([leaves.good!.cert.raw, inter.cert.raw]);
    expect(verifyX509Svid(der, bundle).id.path).toBe('/workload');
  });

  it('accepts a leaf without EKU (the extension is optional) and one signed by the root directly', () => {
    expect(verifyX509Svid(chainOf('noEku'), bundle).id.path).toBe('/workload');
    const direct = verifyX509Svid([leaves.direct!.cert], bundle);
    expect(direct.verifiedChain).toHaveLength(2);
    expect(pki.verify(root, [], leaves.direct!)).toBe(true);
  });

  it('accepts an empty subject when the SAN is critical', () => {
    expect(leaves.emptySubjectCriticalSan!.cert.subject ?? '').toBe(''); // Node reports an empty subject as undefined
    expect(verifyX509Svid(chainOf('emptySubjectCriticalSan'), bundle).id.path).toBe('/workload');
  });

  it('accepts a chain that repeats the root at its end', () => {
    const r = verifyX509Svid([...chainOf('good'), root.cert], bundle);
    expect(r.verifiedChain[2]).toBe(root.cert);
  });

  it('selects the bundle by the leaf trust domain in a BundleSet', () => {
    const other = pki.root('other-root', '/O=other.org', caExt('spiffe://other.org'));
    const set = BundleSet.of([TrustBundle.create({ trustDomain: 'other.org', x509Authorities: [other.cert] }), bundle]);
    expect(verifyX509Svid(chainOf('good'), set).id.trustDomain.name).toBe('example.org');
  });

  it('passes a URI name constraint that permits its trust domain, as openssl does', () => {
    const ca = leaves['interNcGood-ca']!;
    expect(verifyX509Svid([leaves.interNcGood!.cert, ca.cert], bundle).id.path).toBe('/workload');
    expect(pki.verify(root, [ca], leaves.interNcGood!)).toBe(true);
  });
});

describe('verifyX509Svid refuses each broken leaf rule', () => {
  const cases: [string, X509SvidRule][] = [
    ['twoUris', 'multiple-uri-sans'],
    ['noUri', 'no-uri-san'],
    ['notSpiffe', 'invalid-spiffe-id'],
    ['pathless', 'leaf-id-without-path'],
    ['caLeaf', 'leaf-is-ca'],
    ['noKu', 'leaf-no-key-usage'],
    ['kuNotCritical', 'leaf-key-usage-not-critical'],
    ['kuNoDigital', 'leaf-no-digital-signature'],
    ['kuCertSign', 'leaf-key-cert-sign'],
    ['kuCrlSign', 'leaf-crl-sign'],
    ['ekuServerOnly', 'leaf-eku-missing-client-auth'],
    ['ekuClientOnly', 'leaf-eku-missing-server-auth'],
    ['unknownCritical', 'unknown-critical-extension'],
    ['emptySubject', 'san-not-critical'],
  ];
  for (const [name, rule] of cases) {
    it(`${name} → ${rule}`, () => {
      refusedWith(rule, () => verifyX509Svid(chainOf(name), bundle));
      // The same leaf passes plain path validation in openssl: only the SPIFFE rule is broken.
      if (name !== 'unknownCritical') expect(pki.verify(root, [inter], leaves[name]!)).toBe(true);
    });
  }

  it('checkX509SvidLeaf gives the same answers without a bundle', () => {
    expect(checkX509SvidLeaf(leaves.good!.cert).toString()).toBe('spiffe://example.org/workload');
    refusedWith('leaf-key-cert-sign', () => checkX509SvidLeaf(leaves.kuCertSign!.cert));
  });
});

describe('verifyX509Svid refuses broken paths', () => {
  it('expired and not-yet-valid, judged at `now`', () => {
    const good = leaves.good!.cert;
    refusedWith('expired', () => verifyX509Svid(chainOf('good'), bundle, { now: new Date(Date.parse(good.validTo) + DAY) }));
    refusedWith('not-yet-valid', () => verifyX509Svid(chainOf('good'), bundle, { now: new Date(Date.parse(good.validFrom) - DAY) }));
    // An intermediate that expired before the leaf: the leaf is valid at `now`, its issuer is not.
    const shortCa = pki.issue('short-ca', root, '/O=example.org/CN=short', caExt('spiffe://example.org'), 2);
    const longLeaf = pki.issue('long-leaf', shortCa, '/CN=long', leafExt(), 30);
    refusedWith('expired', () => verifyX509Svid([longLeaf.cert, shortCa.cert], bundle, { now: new Date(Date.now() + 5 * DAY) }));
  });

  it('an SVID of one trust domain never validates against the bundle of another', () => {
    // The example.org root published as if it were other.org's: the leaf's own trust domain has no bundle.
    const wrongTd = TrustBundle.create({ trustDomain: 'other.org', x509Authorities: [root.cert] });
    refusedWith('no-bundle-for-trust-domain', () => verifyX509Svid(chainOf('good'), wrongTd));
    refusedWith('no-bundle-for-trust-domain', () => verifyX509Svid(chainOf('good'), BundleSet.of([wrongTd])));
    // A leaf claiming other.org, signed by example.org's CA, against other.org's own root.
    const otherRoot = pki.root('other-root2', '/O=other.org', caExt('spiffe://other.org'));
    const set = BundleSet.of([bundle, TrustBundle.create({ trustDomain: 'other.org', x509Authorities: [otherRoot.cert] })]);
    refusedWith('no-issuer', () => verifyX509Svid(chainOf('otherTd'), set));
  });

  it('an empty bundle (all keys revoked) refuses everything', () => {
    refusedWith('no-bundle-for-trust-domain', () => verifyX509Svid(chainOf('good'), TrustBundle.create({ trustDomain: 'example.org' })));
  });

  it('a broken signature is refused, by openssl too', () => {
    const der = Buffer.from(leaves.good!.cert.raw);
    der[der.length - 2]! ^= 0x01;
    const broken = new X509Certificate(der);
    refusedWith('bad-signature', () => verifyX509Svid([broken, inter.cert], bundle));
    expect(pki.verify(root, [inter], pki.adopt('broken', broken))).toBe(false);
  });

  it('a missing intermediate leaves no path', () => {
    refusedWith('no-issuer', () => verifyX509Svid([leaves.good!.cert], bundle));
  });

  it('intermediate not a CA, without keyCertSign, or naming a workload', () => {
    for (const [name, rule] of [
      ['interNotCa', 'issuer-not-ca'],
      ['interNoCertSign', 'issuer-no-key-cert-sign'],
      ['interWithPath', 'issuer-id-has-path'],
    ] as const) {
      refusedWith(rule, () => verifyX509Svid([leaves[name]!.cert, leaves[`${name}-ca`]!.cert], bundle));
    }
    expect(pki.verify(root, [leaves['interNotCa-ca']!], leaves.interNotCa!)).toBe(false);
  });

  it('pathLenConstraint of the root is enforced, as openssl does', () => {
    const r0 = pki.root('root-pl0', '/O=example.org/CN=pl0', caExt('spiffe://example.org', '').replace('CA:TRUE', 'CA:TRUE, pathlen:0'));
    const i0 = pki.issue('inter-pl0', r0, '/O=example.org/CN=i0', caExt('spiffe://example.org'), 365);
    const l0 = pki.issue('leaf-pl0', i0, '/CN=l0', leafExt());
    const b0 = TrustBundle.create({ trustDomain: 'example.org', x509Authorities: [r0.cert] });
    refusedWith('path-length-exceeded', () => verifyX509Svid([l0.cert, i0.cert], b0));
    expect(pki.verify(r0, [i0], l0)).toBe(false);
    // Directly under the pathlen:0 root is fine.
    const d0 = pki.issue('leaf-pl0-direct', r0, '/CN=d0', leafExt());
    expect(verifyX509Svid([d0.cert], b0).id.path).toBe('/workload');
  });

  it('URI name constraints that exclude the trust domain, as openssl does', () => {
    const ca = leaves['interNcOther-ca']!;
    refusedWith('name-constraints', () => verifyX509Svid([leaves.interNcOther!.cert, ca.cert], bundle));
    expect(pki.verify(root, [ca], leaves.interNcOther!)).toBe(false);
  });

  it('garbage chains are refused with malformed-chain or empty-chain', () => {
    refusedWith('empty-chain', () => verifyX509Svid([], bundle));
    refusedWith('empty-chain', () => verifyX509Svid(Buffer.alloc(0), bundle));
    refusedWith('malformed-chain', () => verifyX509Svid(Buffer.from([0x30, 0x82, 0xff]), bundle));
    refusedWith('malformed-chain', () => verifyX509Svid(Buffer.from([0x30, 0x03, 1, 2, 3]), bundle));
  });
});

describe('verifyX509Svid on mutated certificates', () => {
  it('a leaf with any byte changed is refused with X509SvidError, or verifies to the same identity', () => {
    const der = leaves.good!.cert.raw;
    fc.assert(
      fc.property(fc.nat(der.length - 1), fc.integer({ min: 1, max: 255 }), (at, x) => {
        const m = Buffer.from(der);
        m[at]! ^= x;
        let cert: X509Certificate;
        try {
          cert = new X509Certificate(m);
        } catch {
          return; // not a certificate any more: nothing reaches the verifier
        }
        try {
          const r = verifyX509Svid([cert, inter.cert], bundle);
          // Only bytes outside the signed TBS (e.g. the outer algorithm's encoding) may change without notice.
          expect(r.id.toString()).toBe('spiffe://example.org/workload');
        } catch (err) {
          expect(err).toBeInstanceOf(X509SvidError);
        }
      }),
      { numRuns: 300 },
    );
    refusedWith('malformed-chain', () => verifyX509Svid(Buffer.concat([der, Buffer.from([0x30, 0x05, 1])]), bundle));
  });
});

describe('spiffeIdFromCertificate', () => {
  it('returns the single URI SAN, typed errors otherwise', () => {
    expect(spiffeIdFromCertificate(root.cert).toString()).toBe('spiffe://example.org');
    refusedWith('multiple-uri-sans', () => spiffeIdFromCertificate(leaves.twoUris!.cert));
    refusedWith('no-uri-san', () => spiffeIdFromCertificate(leaves.noUri!.cert));
    refusedWith('invalid-spiffe-id', () => spiffeIdFromCertificate(leaves.notSpiffe!.cert));
  });
});
