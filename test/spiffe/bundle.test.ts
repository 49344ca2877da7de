import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { X509Certificate, generateKeyPairSync, createSecretKey } from 'node:crypto';
import {
  BundleError,
  BundleSet,
  TrustBundle,
  bundleFromJwks,
  bundleFromX509Der,
  bundleSetFromJson,
  bundleSetToJson,
  bundleToJwks,
  bundleToJwksJson,
  bundleX509Der,
  jwtBundleFromJson,
  jwtBundleJson,
  type BundleErrorReason,
} from '../../src/spiffe/index.js';
import { OpensslPki, caExt } from './helpers/openssl-pki.js';

const pki = new OpensslPki();
let ecRoot: X509Certificate;
let rsaRoot: X509Certificate;
const ecJwt = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
const rsaJwt = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
let bundle: TrustBundle;

beforeAll(() => {
  ecRoot = pki.root('ec-root', '/O=example.org', caExt('spiffe://example.org')).cert;
  rsaRoot = pki.root('rsa-root', '/O=example.org/CN=rsa', caExt('spiffe://example.org'), 'rsa').cert;
  bundle = TrustBundle.create({
    trustDomain: 'example.org',
    x509Authorities: [ecRoot, rsaRoot],
    jwtAuthorities: { 'jwt-ec': ecJwt, 'jwt-rsa': rsaJwt },
    sequence: 7,
    refreshHint: 300,
  });
});
afterAll(() => pki.cleanup());

function refused(expected: BundleErrorReason, f: () => unknown): void {
  let caught: unknown;
  try {
    f();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(BundleError);
  expect((caught as BundleError).reason).toBe(expected);
}

const spki = (k: { export(o: object): Buffer | string }) => (k.export({ type: 'spki', format: 'der' }) as Buffer).toString('hex');

describe('bundleToJwks / bundleFromJwks', () => {
  it('writes the SPIFFE JWKS shape', () => {
    const jwks = bundleToJwks(bundle);
    expect(jwks.spiffe_sequence).toBe(7);
    expect(jwks.spiffe_refresh_hint).toBe(300);
    const x509 = jwks.keys.filter((k) => k.use === 'x509-svid');
    const jwt = jwks.keys.filter((k) => k.use === 'jwt-svid');
    expect(x509).toHaveLength(2);
    for (const k of x509) {
      expect(k.kid).toBeUndefined();
      expect(k.x5c).toHaveLength(1);
    }
    expect(x509.map((k) => k.kty).sort()).toEqual(['EC', 'RSA']);
    expect(jwt.map((k) => k.kid).sort()).toEqual(['jwt-ec', 'jwt-rsa']);
    for (const k of jwks.keys) expect(k).not.toHaveProperty('d');
  });

  it('round-trips through JSON text', () => {
    const back = bundleFromJwks('example.org', bundleToJwksJson(bundle));
    expect(back.trustDomain.name).toBe('example.org');
    expect(back.sequence).toBe(7n);
    expect(back.refreshHint).toBe(300);
    expect(back.x509Authorities.map((c) => c.fingerprint256)).toEqual([ecRoot, rsaRoot].map((c) => c.fingerprint256));
    expect(spki(back.jwtAuthority('jwt-ec')!)).toBe(spki(ecJwt));
    expect(spki(back.jwtAuthority('jwt-rsa')!)).toBe(spki(rsaJwt));
  });

  it('keeps a 64-bit spiffe_sequence exact', () => {
    const big = bundle.with({ sequence: 18446744073709551615n });
    const text = bundleToJwksJson(big);
    expect(text.startsWith('{"spiffe_sequence":18446744073709551615,')).toBe(true);
    expect(bundleFromJwks('example.org', text).sequence).toBe(18446744073709551615n);
  });

  it('an empty keys array is a valid bundle that trusts nothing', () => {
    expect(bundleFromJwks('example.org', '{"keys":[]}').isEmpty).toBe(true);
  });

  it('ignores unknown use values, missing use, unknown kty and unknown members', () => {
    const jwks = bundleToJwks(bundle);
    const doc = {
      ...jwks,
      spiffe_sequence: 7,
      future_member: { anything: true },
      keys: [
        ...jwks.keys.map((k) => ({ ...k, extra_param: 'ignored' })),
        { kty: 'EC', use: 'wit-svid', kid: 'w', crv: 'P-256', x: 'AA', y: 'AA' },
        { kty: 'RSA', n: 'AQAB', e: 'AQAB' },
        { kty: 'OKP', use: 'jwt-svid', kid: 'ed', crv: 'Ed25519', x: 'AAAA' },
        { kty: 'FUTURE', use: 'jwt-svid', kid: 'f' },
      ],
    };
    const back = bundleFromJwks('example.org', JSON.stringify(doc));
    expect(back.x509Authorities).toHaveLength(2);
    expect(back.jwtKeyIds.sort()).toEqual(['jwt-ec', 'jwt-rsa']);
  });

  const withKeys = (keys: unknown[]) => JSON.stringify({ keys });
  const x509Key = () => bundleToJwks(bundle).keys.find((k) => k.use === 'x509-svid' && k.kty === 'EC')!;
  const jwtKey = () => bundleToJwks(bundle).keys.find((k) => k.kid === 'jwt-ec')!;

  it('refuses x509-svid keys without exactly one x5c certificate', () => {
    const k = x509Key();
    refused('x5c-count', () => bundleFromJwks('example.org', withKeys([{ ...k, x5c: [] }])));
    refused('x5c-count', () => bundleFromJwks('example.org', withKeys([{ ...k, x5c: [k.x5c![0], rsaRoot.raw.toString('base64')] }])));
    refused('x5c-count', () => bundleFromJwks('example.org', withKeys([{ ...k, x5c: undefined }])));
    refused('bad-certificate', () => bundleFromJwks('example.org', withKeys([{ ...k, x5c: ['AAAA'] }])));
  });

  it('refuses an x5c whose key is not the key of the JWK', () => {
    const ec = x509Key();
    const otherEc = bundleToJwks(TrustBundle.create({ trustDomain: 'x.org', jwtAuthorities: { k: generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey } })).keys[0]!;
    refused('x5c-key-mismatch', () => bundleFromJwks('example.org', withKeys([{ ...ec, x: otherEc.x, y: otherEc.y }])));
  });

  it('refuses jwt-svid keys without kid, duplicate kids, and private members', () => {
    const k = jwtKey();
    refused('missing-kid', () => bundleFromJwks('example.org', withKeys([{ ...k, kid: undefined }])));
    refused('missing-kid', () => bundleFromJwks('example.org', withKeys([{ ...k, kid: '' }])));
    refused('duplicate-kid', () => bundleFromJwks('example.org', withKeys([k, { ...k }])));
    refused('bad-jwk', () => bundleFromJwks('example.org', withKeys([{ ...k, d: 'AAAA' }])));
    refused('bad-jwk', () => bundleFromJwks('example.org', withKeys([{ ...k, x: 'not base64url!' }])));
    refused('bad-jwk', () => bundleFromJwks('example.org', withKeys([{ ...k, x: 'AAAA' }])));
  });

  it('refuses documents that are not bundles', () => {
    refused('missing-keys', () => bundleFromJwks('example.org', '{}'));
    refused('missing-keys', () => bundleFromJwks('example.org', '{"keys":{}}'));
    refused('not-an-object', () => bundleFromJwks('example.org', '[]'));
    refused('malformed-json', () => bundleFromJwks('example.org', '{"keys":[}'));
    refused('duplicate-key', () => bundleFromJwks('example.org', '{"keys":[],"keys":[]}'));
    refused('bad-sequence', () => bundleFromJwks('example.org', '{"keys":[],"spiffe_sequence":-1}'));
    refused('bad-sequence', () => bundleFromJwks('example.org', '{"keys":[],"spiffe_sequence":1.5}'));
    refused('bad-refresh-hint', () => bundleFromJwks('example.org', '{"keys":[],"spiffe_refresh_hint":"60"}'));
    refused('trust-domain', () => bundleFromJwks('Example.org', '{"keys":[]}'));
  });
});

describe('TrustBundle', () => {
  it('is immutable and refuses keys JWT-SVID cannot use', () => {
    expect(Object.isFrozen(bundle)).toBe(true);
    expect(Object.isFrozen(bundle.x509Authorities)).toBe(true);
    bundle.jwtAuthorities.delete('jwt-ec');
    expect(bundle.jwtAuthority('jwt-ec')).toBeDefined();
    refused('unsupported-key', () => TrustBundle.create({ trustDomain: 'a.org', jwtAuthorities: { k: generateKeyPairSync('ed25519').publicKey } }));
    refused('unsupported-key', () => TrustBundle.create({ trustDomain: 'a.org', jwtAuthorities: { k: createSecretKey(Buffer.alloc(32)) } }));
    refused('unsupported-key', () => TrustBundle.create({ trustDomain: 'a.org', jwtAuthorities: { k: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey } }));
    refused('duplicate-kid', () => TrustBundle.create({ trustDomain: 'a.org', jwtAuthorities: [['k', ecJwt], ['k', rsaJwt]] }));
    refused('bad-sequence', () => TrustBundle.create({ trustDomain: 'a.org', sequence: -1 }));
  });
});

describe('Workload API forms', () => {
  it('X.509 authorities as concatenated DER, and back', () => {
    const der = bundleX509Der(bundle);
    expect(der.equals(Buffer.concat([ecRoot.raw, rsaRoot.raw]))).toBe(true);
    expect(bundleFromX509Der('example.org', der).x509Authorities.map((c) => c.fingerprint256)).toEqual([ecRoot, rsaRoot].map((c) => c.fingerprint256));
    refused('malformed-der', () => bundleFromX509Der('example.org', der.subarray(0, der.length - 1)));
  });

  it('JWT bundle JSON holds only the JWT authorities, with kid', () => {
    const doc = JSON.parse(jwtBundleJson(bundle)) as { keys: { kid: string; x5c?: unknown }[] };
    expect(doc.keys.map((k) => k.kid).sort()).toEqual(['jwt-ec', 'jwt-rsa']);
    expect(doc.keys.every((k) => k.x5c === undefined)).toBe(true);
    const back = jwtBundleFromJson('example.org', jwtBundleJson(bundle));
    expect(back.jwtKeyIds.sort()).toEqual(['jwt-ec', 'jwt-rsa']);
    // go-spiffe writes JWT bundles without `use`: such keys are JWT authorities too.
    const noUse = JSON.stringify({ keys: doc.keys.map(({ ...k }) => ({ ...k, use: undefined })) });
    expect(jwtBundleFromJson('example.org', noUse).jwtKeyIds.sort()).toEqual(['jwt-ec', 'jwt-rsa']);
  });
});

describe('BundleSet and bundle maps', () => {
  it('round-trips a trust_domains map, without refresh hints', () => {
    const other = TrustBundle.create({ trustDomain: 'other.org', jwtAuthorities: { o: ecJwt }, sequence: 1 });
    const set = BundleSet.of([bundle, other]);
    const text = bundleSetToJson(set);
    expect(text).not.toContain('spiffe_refresh_hint');
    const back = bundleSetFromJson(text);
    expect(back.trustDomains.map((t) => t.name).sort()).toEqual(['example.org', 'other.org']);
    expect(back.get('spiffe://other.org')!.jwtKeyIds).toEqual(['o']);
    expect(back.get('example.org')!.x509Authorities).toHaveLength(2);
  });

  it('refuses duplicate trust domains, however spelled', () => {
    refused('duplicate-key', () => bundleSetFromJson('{"trust_domains":{"a.org":{"keys":[]},"a.org":{"keys":[]}}}'));
    refused('duplicate-trust-domain', () => bundleSetFromJson('{"trust_domains":{"a.org":{"keys":[]},"spiffe://a.org":{"keys":[]}}}'));
    refused('duplicate-key', () => bundleSetFromJson('{"trust_domains":{},"trust_domains":{}}'));
    refused('trust-domain', () => bundleSetFromJson('{"trust_domains":{"A.org":{"keys":[]}}}'));
    refused('duplicate-trust-domain', () => BundleSet.of([bundle, bundle]));
  });

  it('with/without return new sets', () => {
    const set = BundleSet.of([bundle]);
    const more = set.with(TrustBundle.create({ trustDomain: 'b.org' }));
    expect(set.size).toBe(1);
    expect(more.size).toBe(2);
    expect(more.without('b.org').size).toBe(1);
  });
});

describe('bundle parsers under fuzzing', () => {
  const onlyBundleErrors = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      if (!(err instanceof BundleError)) throw err;
    }
  };

  it('random JSON values and strings give a bundle or a BundleError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json(), fc.jsonValue().map((v) => JSON.stringify({ keys: [v] }))), (text) => {
        onlyBundleErrors(() => bundleFromJwks('example.org', text));
        onlyBundleErrors(() => bundleSetFromJson(text));
        onlyBundleErrors(() => jwtBundleFromJson('example.org', text));
      }),
      { numRuns: 500 },
    );
  });

  it('mutated valid bundles give a bundle or a BundleError', () => {
    const text = bundleToJwksJson(bundle);
    fc.assert(
      fc.property(fc.nat(text.length - 1), fc.string({ maxLength: 3 }), fc.nat(4), (at, ins, del) => {
        const t = text.slice(0, at) + ins + text.slice(at + del);
        onlyBundleErrors(() => bundleFromJwks('example.org', t));
      }),
      { numRuns: 500 },
    );
  });

  it('random and truncated DER give a bundle or a BundleError', () => {
    const der = bundleX509Der(bundle);
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.nat(der.length).map((n) => der.subarray(0, n))), (bytes) => {
        onlyBundleErrors(() => bundleFromX509Der('example.org', bytes));
      }),
      { numRuns: 500 },
    );
  });
});
