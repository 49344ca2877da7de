import { describe, expect, it } from 'vitest';
import { createLocalJWKSet, jwtVerify } from 'jose';
import fc from 'fast-check';
import { createHmac, sign as nodeSign } from 'node:crypto';
import {
  BundleSet,
  JwtSvidError,
  SpiffeId,
  TrustBundle,
  bundleToJwks,
  jwtBundleFromJson,
  jwtBundleJson,
  mintJwtSvid,
  validateJwtSvid,
  type JwtSvidReason,
  type SignatureAlgorithm,
} from '../../src/spiffe/index.js';
import { TestSigner } from './helpers/test-signer.js';

const SUB = SpiffeId.parse('spiffe://example.org/workload');
const NOW = new Date('2030-01-01T00:00:00Z');
const IN_5_MIN = new Date(NOW.getTime() + 300_000);
const ALGS: SignatureAlgorithm[] = ['ES256', 'ES384', 'RS256', 'PS256'];
const signers = Object.fromEntries(ALGS.map((a) => [a, new TestSigner(a, `kid-${a}`)])) as Record<SignatureAlgorithm, TestSigner>;
const es256 = signers.ES256!;
const bundle = TrustBundle.create({
  trustDomain: 'example.org',
  jwtAuthorities: ALGS.map((a) => [signers[a]!.keyId, signers[a]!.publicKey] as const),
});

const b64 = (v: unknown): string => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** A token with any header and claims, correctly signed by `signer` (so only the broken rule is broken). */
async function craft(header: object, claims: object, signer: TestSigner = es256): Promise<string> {
  const input = `${b64(header)}.${b64(claims)}`;
  return `${input}.${(await signer.sign(Buffer.from(input))).toString('base64url')}`;
}
const goodClaims = (over: object = {}) => ({ sub: SUB.toString(), aud: 'svc', exp: NOW.getTime() / 1000 + 300, iat: NOW.getTime() / 1000, ...over });
const goodHeader = (over: object = {}) => ({ alg: 'ES256', kid: es256.keyId, typ: 'JWT', ...over });

async function reason(p: Promise<unknown>): Promise<JwtSvidReason | string> {
  try {
    await p;
    return 'accepted';
  } catch (err) {
    if (err instanceof JwtSvidError) return err.reason;
    return `non-JwtSvidError: ${String(err)}`;
  }
}
const validate = (token: string, src = bundle as TrustBundle | BundleSet, aud: string | string[] = 'svc', now = NOW) =>
  validateJwtSvid(token, src, aud, { now });

describe('mintJwtSvid + validateJwtSvid round trip', () => {
  for (const alg of ALGS) {
    it(`${alg}: keel validates it, and so does jose given the bundle JWKS`, async () => {
      const signer = signers[alg]!;
      const token = await mintJwtSvid({ signer, sub: SUB, aud: ['svc'], expiresAt: IN_5_MIN, issuedAt: NOW, extraClaims: { team: 'a' } });
      const [h] = token.split('.');
      expect(JSON.parse(Buffer.from(h!, 'base64url').toString())).toEqual({ alg, kid: signer.keyId, typ: 'JWT' });

      const v = await validate(token);
      expect(v.id.equals(SUB)).toBe(true);
      expect(v.header).toEqual({ alg, kid: signer.keyId, typ: 'JWT' });
      expect(v.expiresAt.getTime()).toBe(IN_5_MIN.getTime());
      expect(v.claims).toMatchObject({ sub: SUB.toString(), aud: 'svc', team: 'a', iat: NOW.getTime() / 1000 });

      // jose, independently: the bundle's jwt-svid JWKs as a JWKS (jose wants use "sig").
      const jwks = bundleToJwks(bundle);
      const keys = jwks.keys.filter((k) => k.use === 'jwt-svid').map((k) => ({ ...k, use: 'sig' }));
      const r = await jwtVerify(token, createLocalJWKSet({ keys } as never), { audience: 'svc', currentDate: NOW });
      expect(r.payload.sub).toBe(SUB.toString());
      expect(r.protectedHeader.kid).toBe(signer.keyId);
    });
  }

  it('several audiences are written as an array; any accepted one matches', async () => {
    const token = await mintJwtSvid({ signer: es256, sub: SUB, aud: ['a', 'b'], expiresAt: IN_5_MIN, issuedAt: NOW });
    expect((await validate(token, bundle, 'b')).audience).toEqual(['a', 'b']);
    expect((await validate(token, bundle, ['x', 'a'])).id.equals(SUB)).toBe(true);
  });

  it('validates through a BundleSet and the JWT bundle JSON of the Workload API', async () => {
    const token = await mintJwtSvid({ signer: es256, sub: SUB, aud: ['svc'], expiresAt: IN_5_MIN, issuedAt: NOW });
    const fromWire = jwtBundleFromJson('example.org', jwtBundleJson(bundle));
    expect((await validate(token, BundleSet.of([fromWire]))).id.equals(SUB)).toBe(true);
  });

  it('accepts typ JOSE and an absent typ', async () => {
    expect(await reason(validate(await craft(goodHeader({ typ: 'JOSE' }), goodClaims())))).toBe('accepted');
    expect(await reason(validate(await craft({ alg: 'ES256', kid: es256.keyId }, goodClaims())))).toBe('accepted');
  });

  it('exp within the clock tolerance is accepted, beyond it refused', async () => {
    const t = await craft(goodHeader(), goodClaims({ exp: NOW.getTime() / 1000 - 30 }));
    expect(await reason(validateJwtSvid(t, bundle, 'svc', { now: NOW, clockTolerance: 60 }))).toBe('accepted');
    expect(await reason(validateJwtSvid(t, bundle, 'svc', { now: NOW, clockTolerance: 10 }))).toBe('expired');
  });
});

describe('validateJwtSvid refuses each broken rule', () => {
  const nowS = NOW.getTime() / 1000;
  const cases: [string, () => Promise<string>, JwtSvidReason][] = [
    ['missing kid', () => craft({ alg: 'ES256', typ: 'JWT' }, goodClaims()), 'missing-kid'],
    ['unknown kid', () => craft(goodHeader({ kid: 'nope' }), goodClaims()), 'unknown-kid'],
    ['wrong aud', () => craft(goodHeader(), goodClaims({ aud: ['other'] })), 'wrong-aud'],
    ['missing aud', () => craft(goodHeader(), goodClaims({ aud: undefined })), 'missing-aud'],
    ['empty aud array', () => craft(goodHeader(), goodClaims({ aud: [] })), 'missing-aud'],
    ['expired', () => craft(goodHeader(), goodClaims({ exp: nowS - 3600 })), 'expired'],
    ['missing exp', () => craft(goodHeader(), goodClaims({ exp: undefined })), 'missing-exp'],
    ['exp not a number', () => craft(goodHeader(), goodClaims({ exp: '2030' })), 'bad-claim'],
    ['nbf in the future', () => craft(goodHeader(), goodClaims({ nbf: nowS + 3600 })), 'not-yet-valid'],
    ['missing sub', () => craft(goodHeader(), goodClaims({ sub: undefined })), 'missing-sub'],
    ['non-SPIFFE sub', () => craft(goodHeader(), goodClaims({ sub: 'https://example.org/x' })), 'invalid-sub'],
    ['sub with an uppercase trust domain', () => craft(goodHeader(), goodClaims({ sub: 'spiffe://Example.org/x' })), 'invalid-sub'],
    ['alg none', async () => `${b64({ alg: 'none', kid: es256.keyId })}.${b64(goodClaims())}.`, 'unsupported-alg'],
    [
      'HS256 with the public key as the HMAC secret',
      async () => {
        const input = `${b64({ alg: 'HS256', kid: es256.keyId, typ: 'JWT' })}.${b64(goodClaims())}`;
        const secret = es256.publicKey.export({ type: 'spki', format: 'pem' });
        return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`;
      },
      'unsupported-alg',
    ],
    ['EdDSA', () => craft(goodHeader({ alg: 'EdDSA' }), goodClaims()), 'unsupported-alg'],
    ['crit header', () => craft(goodHeader({ crit: ['exp'] }), goodClaims()), 'forbidden-header'],
    ['jku header', () => craft(goodHeader({ jku: 'https://evil.example/jwks' }), goodClaims()), 'forbidden-header'],
    ['b64 header', () => craft(goodHeader({ b64: false }), goodClaims()), 'forbidden-header'],
    ['typ JWS', () => craft(goodHeader({ typ: 'at+jwt' }), goodClaims()), 'bad-typ'],
    ['JWE-like 5 parts', async () => 'eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d', 'not-compact-jws'],
    ['two parts', async () => 'eyJhbGciOiJFUzI1NiJ9.e30', 'not-compact-jws'],
    ['bad base64 header', async () => `eyJ*bGci.${b64(goodClaims())}.AAAA`, 'bad-header'],
    ['header not JSON', async () => `${b64('not json')}.${b64(goodClaims())}.AAAA`, 'bad-header'],
    ['duplicate alg in the header', async () => `${b64('{"alg":"ES256","alg":"none","kid":"kid-ES256"}')}.${b64(goodClaims())}.AAAA`, 'bad-header'],
    ['bad base64 payload', async () => `${b64(goodHeader())}.%%%.AAAA`, 'malformed'],
    ['bad base64 signature', async () => `${b64(goodHeader())}.${b64(goodClaims())}.AA+/`, 'malformed'],
    ['alg ES384 against the ES256 key', () => craft(goodHeader({ alg: 'ES384' }), goodClaims()), 'alg-key-mismatch'],
    ['alg RS256 against the ES256 key', () => craft(goodHeader({ alg: 'RS256' }), goodClaims()), 'alg-key-mismatch'],
    [
      'tampered payload',
      async () => {
        const [h, , s] = (await craft(goodHeader(), goodClaims())).split('.');
        return `${h}.${b64(goodClaims({ sub: 'spiffe://example.org/admin' }))}.${s}`;
      },
      'bad-signature',
    ],
    ['signed by another key under the same kid', () => craft(goodHeader(), goodClaims(), new TestSigner('ES256', es256.keyId)), 'bad-signature'],
    ['sub in a trust domain with no bundle', () => craft(goodHeader(), goodClaims({ sub: 'spiffe://other.org/w' })), 'no-bundle'],
  ];
  for (const [name, make, expected] of cases) {
    it(`${name} → ${expected}`, async () => {
      expect(await reason(validate(await make()))).toBe(expected);
    });
  }

  it('the key is looked up in the bundle of the sub trust domain only', async () => {
    // other.org publishes a different key under the same kid: a token signed with example.org's key
    // but claiming an other.org subject must not verify.
    const otherKey = new TestSigner('ES256', es256.keyId);
    const set = BundleSet.of([bundle, TrustBundle.create({ trustDomain: 'other.org', jwtAuthorities: [[es256.keyId, otherKey.publicKey]] })]);
    const t = await craft(goodHeader(), goodClaims({ sub: 'spiffe://other.org/w' }));
    expect(await reason(validate(t, set))).toBe('bad-signature');
    expect(await reason(validate(await craft(goodHeader(), goodClaims()), set))).toBe('accepted');
  });
});

describe('the iss claim', () => {
  const claimsOf = (t: string) => JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString('utf8'));
  it('is set when an issuer is given, absent otherwise, and never through extraClaims', async () => {
    const withIss = await mintJwtSvid({ signer: es256, sub: SUB, aud: ['svc'], expiresAt: IN_5_MIN, issuedAt: NOW, issuer: 'https://oidc.example.org' });
    expect(claimsOf(withIss).iss).toBe('https://oidc.example.org');
    expect((await validateJwtSvid(withIss, bundle, 'svc', { now: NOW })).claims.iss).toBe('https://oidc.example.org');
    expect('iss' in claimsOf(await mintJwtSvid({ signer: es256, sub: SUB, aud: ['svc'], expiresAt: IN_5_MIN, issuedAt: NOW }))).toBe(false);
    expect(await reason(mintJwtSvid({ signer: es256, sub: SUB, aud: ['a'], expiresAt: IN_5_MIN, extraClaims: { iss: 'https://evil' } }))).toBe('bad-mint-input');
    expect(await reason(mintJwtSvid({ signer: es256, sub: SUB, aud: ['a'], expiresAt: IN_5_MIN, issuer: '' }))).toBe('bad-mint-input');
  });
});

describe('mintJwtSvid refuses bad input', () => {
  it('empty audience, reserved extra claims, exp before iat, DER signatures', async () => {
    expect(await reason(mintJwtSvid({ signer: es256, sub: SUB, aud: [], expiresAt: IN_5_MIN }))).toBe('bad-mint-input');
    expect(await reason(mintJwtSvid({ signer: es256, sub: SUB, aud: ['a'], expiresAt: IN_5_MIN, extraClaims: { sub: 'x' } }))).toBe('bad-mint-input');
    expect(await reason(mintJwtSvid({ signer: es256, sub: SUB, aud: ['a'], expiresAt: NOW, issuedAt: IN_5_MIN }))).toBe('bad-mint-input');
    const derSigner = { ...es256, algorithm: es256.algorithm, keyId: es256.keyId, publicKey: es256.publicKey, sign: async (d: Uint8Array) => nodeSign('sha256', d, es256.privateKey) };
    expect(await reason(mintJwtSvid({ signer: derSigner, sub: SUB, aud: ['a'], expiresAt: IN_5_MIN }))).toBe('signer-output');
  });
});

describe('validateJwtSvid under fuzzing', () => {
  it('random strings are refused with JwtSvidError only', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.array(fc.base64String(), { maxLength: 6 }).map((a) => a.join('.'))), async (s) => {
        const r = await reason(validate(s));
        expect(r).not.toBe('accepted');
        expect(r.startsWith('non-JwtSvidError')).toBe(false);
      }),
      { numRuns: 300 },
    );
  });

  it('mutations of a valid token are refused with JwtSvidError, or are the same token', async () => {
    const token = await mintJwtSvid({ signer: es256, sub: SUB, aud: ['svc'], expiresAt: IN_5_MIN, issuedAt: NOW });
    const alphabet = 'ABCDEFabcdef0123456789-_.=+/ %\u00e9';
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({ at: fc.nat(token.length), op: fc.constantFrom('set', 'insert', 'delete', 'truncate'), ch: fc.constantFrom(...alphabet) }),
          { minLength: 1, maxLength: 4 },
        ),
        async (edits) => {
          let t = token;
          for (const { at, op, ch } of edits) {
            const i = Math.min(at, t.length);
            if (op === 'set') t = t.slice(0, i) + ch + t.slice(i + 1);
            else if (op === 'insert') t = t.slice(0, i) + ch + t.slice(i);
            else if (op === 'delete') t = t.slice(0, i) + t.slice(i + 1);
            else t = t.slice(0, i);
          }
          const r = await reason(validate(t));
          expect(r.startsWith('non-JwtSvidError')).toBe(false);
          // base64url has slack in its last character; anything accepted must decode to the same token contents.
          if (r === 'accepted') {
            const dec = (x: string) => x.split('.').map((p) => Buffer.from(p, 'base64url').toString('hex')).join('.');
            expect(dec(t)).toBe(dec(token));
          }
        },
      ),
      { numRuns: 400 },
    );
  });
});
