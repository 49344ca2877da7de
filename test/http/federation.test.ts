/**
 * The SPIFFE bundle endpoint and OIDC discovery over TLS on a real socket,
 * checked with jose (createRemoteJWKSet + jwtVerify) and keel's own bundle
 * parser and JWT-SVID validator.
 */
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRemoteJWKSet, customFetch, jwtVerify, errors as joseErrors } from 'jose';
import { bundleFromJwks } from '../../src/spiffe/bundle.js';
import { mintJwtSvid, validateJwtSvid } from '../../src/spiffe/jwt-svid.js';
import { httpsFetch, makeTestPki, memorySigner, MutableBundle, startTestApi, tcpRequest, td, testBundle, type RunningApi, type TestPki } from './helpers.js';

let pki: TestPki;
let api: RunningApi;
const signer = memorySigner('jwt-key-1');
const signer384 = memorySigner('jwt-key-2', 'P-384');
let bundles: MutableBundle;
const get = (path: string) => tcpRequest({ port: api.port, path, ca: pki.webRoot.cert });

beforeAll(async () => {
  pki = await makeTestPki();
  bundles = new MutableBundle(testBundle(pki, [signer, signer384], 7));
  api = await startTestApi({ bundles, tls: pki.server, extra: { bundleRefreshHintSeconds: 120, bundlePath: '/spiffe/bundle' } });
});
afterAll(async () => {
  await api?.stop();
  pki?.cleanup();
});

const mint = (s = signer, aud = ['api.example.org']) =>
  mintJwtSvid({ signer: s, sub: td.child('/app/web'), aud, expiresAt: new Date(Date.now() + 300_000) });

describe('SPIFFE bundle endpoint (https_web)', () => {
  it('serves the trust domain bundle as JWKS with sequence and refresh hint', async () => {
    const r = await get('/spiffe/bundle');
    expect(r.status).toBe(200);
    expect(r.contentType).toMatch(/^application\/json/);
    const doc = r.json();
    expect(doc.spiffe_sequence).toBe(7);
    expect(doc.spiffe_refresh_hint).toBe(120);
    const b = bundleFromJwks(td, r.text);
    expect(b.x509Authorities.map((c) => c.raw.toString('base64'))).toEqual([new X509Certificate(pki.spiffeCa.cert).raw.toString('base64')]);
    expect(b.jwtKeyIds.sort()).toEqual(['jwt-key-1', 'jwt-key-2']);
    // A JWT-SVID validates against the bundle as fetched.
    const v = await validateJwtSvid(await mint(), b, 'api.example.org');
    expect(v.id.toString()).toBe('spiffe://example.org/app/web');
  });

  it('follows the CA: a new bundle is served at once', async () => {
    const before = bundles.current;
    bundles.current = testBundle(pki, [signer], 8);
    try {
      const doc = (await get('/spiffe/bundle')).json();
      expect(doc.spiffe_sequence).toBe(8);
      expect(doc.keys.filter((k: { use: string }) => k.use === 'jwt-svid').map((k: { kid: string }) => k.kid)).toEqual(['jwt-key-1']);
    } finally {
      bundles.current = before;
    }
  });
});

describe('OIDC discovery', () => {
  it('publishes a discovery document whose JWKS jose uses to verify a JWT-SVID', async () => {
    // Discovery comes from configuration only (see oidc-discovery.test.ts for the Host header).
    const local = await startTestApi({ bundles, tls: pki.server, extra: { jwtIssuer: 'https://oidc.example.org' } });
    let d;
    try {
      d = await tcpRequest({ port: local.port, path: '/.well-known/openid-configuration', ca: pki.webRoot.cert });
    } finally {
      await local.stop();
    }
    expect(d.status).toBe(200);
    const doc = d.json();
    expect(doc).toEqual({
      issuer: 'https://oidc.example.org',
      jwks_uri: 'https://oidc.example.org/keys',
      response_types_supported: ['id_token'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: ['ES256', 'ES384'],
    });
    expect(doc.authorization_endpoint).toBeUndefined();

    const keys = (await get('/keys')).json().keys;
    expect(keys.map((k: { kid: string; use: string; alg: string }) => [k.kid, k.use, k.alg]).sort()).toEqual([
      ['jwt-key-1', 'sig', 'ES256'],
      ['jwt-key-2', 'sig', 'ES384'],
    ]);
    expect(keys.every((k: Record<string, unknown>) => k.d === undefined && k.x5c === undefined)).toBe(true);

    // oidc.example.org does not resolve here; the same JWKS is served on the listener.
    const jwks = createRemoteJWKSet(new URL(`https://127.0.0.1:${api.port}/keys`), { [customFetch]: httpsFetch(pki.webRoot.cert) });
    for (const s of [signer, signer384]) {
      const { payload, protectedHeader } = await jwtVerify(await mint(s), jwks, { audience: 'api.example.org' });
      expect(payload.sub).toBe('spiffe://example.org/app/web');
      expect(protectedHeader.kid).toBe(s.keyId);
    }
    // A token from a key outside the bundle does not verify, nor one for another audience.
    const stranger = memorySigner('jwt-key-1');
    await expect(jwtVerify(await mint(stranger), jwks, { audience: 'api.example.org' })).rejects.toBeInstanceOf(joseErrors.JWSSignatureVerificationFailed);
    await expect(jwtVerify(await mint(signer, ['other']), jwks, { audience: 'api.example.org' })).rejects.toBeInstanceOf(joseErrors.JWTClaimValidationFailed);
  });

  it('is not served without an issuer or domains configured', async () => {
    const r = await get('/.well-known/openid-configuration');
    expect(r.status).toBe(404);
    expect(r.json().detail).toMatch(/server\.jwt\.issuer/);
  });

  it('uses the configured issuer', async () => {
    const other = await startTestApi({ bundles, tls: pki.server, extra: { jwtIssuer: 'https://oidc.example.org/' } });
    try {
      const doc = (await tcpRequest({ port: other.port, path: '/.well-known/openid-configuration', ca: pki.webRoot.cert })).json();
      expect(doc.issuer).toBe('https://oidc.example.org');
      expect(doc.jwks_uri).toBe('https://oidc.example.org/keys');
    } finally {
      await other.stop();
    }
  });
});
