/**
 * WIT-SVIDs: the spiffe-layer minting and strict validation, and the
 * Workload API's FetchWITSVID / FetchWITBundles over a real Unix socket with
 * real gRPC, the tokens checked by an independent JOSE implementation
 * (Debian's python3-jwcrypto) against the WIT bundle the agent serves.
 */
import { generateKeyPairSync } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, type WorkloadApiServer } from '../../src/agent/workload/index.js';
import type { IssuedWitSvid } from '../../src/agent/workload/index.js';
import { witKeyPair } from '../../src/agent/manager/wit-svids.js';
import { signerFromPrivateKey } from '../../src/server/ca/index.js';
import {
  BundleSet,
  TrustBundle,
  checkCnfJwk,
  mintJwtSvid,
  mintWitSvid,
  validateJwtSvid,
  validateWitSvid,
  witAuthoritiesFromJson,
  witAuthoritiesOf,
  witBundleJson,
  witKeyId,
  WitSvidError,
  type WitAuthorities,
} from '../../src/spiffe/index.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { FakeIdentitySource, type FakeEntry } from './fake-source.js';
import { header, StreamReader, tmpSocketPath, workloadClient, type WorkloadClient } from './client.js';
import { jwcryptoVerifyWit as jwcrypto, type WitBundlesResponse, type WitSvidResponse } from './jwcrypto.js';

const ecKey = (curve = 'P-256') => generateKeyPairSync('ec', { namedCurve: curve }).privateKey;
const signer = signerFromPrivateKey(ecKey(), 'ES256');
const authorities: WitAuthorities = witAuthoritiesOf([[signer.keyId, signer.publicKey]]);
const forTd = (): WitAuthorities => authorities;
const WEB = SpiffeId.parse('spiffe://example.org/web');
const inFive = (): Date => new Date(Date.now() + 300_000);

async function workloadJwk(alg = 'ES256', curve = 'P-256'): Promise<Record<string, unknown>> {
  return { ...generateKeyPairSync('ec', { namedCurve: curve }).publicKey.export({ format: 'jwk' }), alg };
}

/** Re-signs a token after editing its header or claims, as a forger with the key would. */
async function resign(token: string, edit: (h: Record<string, unknown>, c: Record<string, unknown>) => void): Promise<string> {
  const [h, p] = token.split('.') as [string, string];
  const head = JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>;
  const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
  edit(head, claims);
  const input = `${Buffer.from(JSON.stringify(head)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${input}.${(await signer.sign(Buffer.from(input))).toString('base64url')}`;
}

async function reasonOf(p: Promise<unknown>): Promise<string> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  if (!(e instanceof WitSvidError)) throw new Error(`expected a WitSvidError, got ${String(e)}`);
  return e.reason;
}

describe('WIT-SVID minting and validation (src/spiffe/wit-svid.ts)', () => {
  it('mints typ wit+jwt with a kid of its own and the workload key in cnf.jwk; the validator returns the cnf key', async () => {
    const jwk = await workloadJwk();
    const { token, kid, jti } = await mintWitSvid({ signer, sub: WEB, cnfJwk: jwk, expiresAt: inFive() });
    const head = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString());
    expect(head).toEqual({ alg: 'ES256', kid: witKeyId(signer.keyId), typ: 'wit+jwt' });
    expect(kid).not.toBe(signer.keyId);
    const v = await validateWitSvid(token, forTd);
    expect(v.id.toString()).toBe(WEB.toString());
    expect(v.jti).toBe(jti);
    expect(v.cnfJwk).toEqual({ kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y, alg: 'ES256' });
    expect(Object.keys(v.claims).sort()).toEqual(['cnf', 'exp', 'iat', 'jti', 'nbf', 'sub']);
  });

  it('refuses, naming the rule: wrong typ, no kid, unknown kid, extra header, no cnf, expired, a trust-domain sub, a forged signature', async () => {
    const token = (await mintWitSvid({ signer, sub: WEB, cnfJwk: await workloadJwk(), expiresAt: inFive() })).token;
    expect(await reasonOf(validateWitSvid(await resign(token, (h) => (h.typ = 'JWT')), forTd))).toBe('bad-typ');
    expect(await reasonOf(validateWitSvid(await resign(token, (h) => delete h.typ), forTd))).toBe('bad-typ');
    expect(await reasonOf(validateWitSvid(await resign(token, (h) => delete h.kid), forTd))).toBe('missing-kid');
    expect(await reasonOf(validateWitSvid(await resign(token, (h) => (h.kid = signer.keyId)), forTd))).toBe('unknown-kid');
    expect(await reasonOf(validateWitSvid(await resign(token, (h) => (h.jku = 'https://evil.example')), forTd))).toBe('forbidden-header');
    expect(await reasonOf(validateWitSvid(await resign(token, (_h, c) => delete c.cnf), forTd))).toBe('missing-cnf');
    expect(await reasonOf(validateWitSvid(await resign(token, (_h, c) => (c.exp = Math.floor(Date.now() / 1000) - 120)), forTd))).toBe('expired');
    expect(await reasonOf(validateWitSvid(await resign(token, (_h, c) => (c.nbf = Math.floor(Date.now() / 1000) + 600)), forTd))).toBe('not-yet-valid');
    expect(await reasonOf(validateWitSvid(await resign(token, (_h, c) => (c.sub = 'spiffe://example.org')), forTd))).toBe('invalid-sub');
    const [h, p] = token.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), sub: 'spiffe://example.org/admin' })).toString('base64url')}.${token.split('.')[2]}`;
    expect(await reasonOf(validateWitSvid(forged, forTd))).toBe('bad-signature');
    expect(await reasonOf(validateWitSvid(token, () => undefined))).toBe('no-bundle');
  });

  it('cnf.jwk: alg required and fitting the key, public members only; minting refuses such a key too', async () => {
    const pub = await workloadJwk();
    expect(() => checkCnfJwk({ ...pub, alg: undefined })).toThrow(/cnf.jwk has no alg/);
    expect(() => checkCnfJwk({ ...pub, alg: 'ES384' })).toThrow(/does not fit/);
    expect(() => checkCnfJwk({ ...pub, alg: 'HS256' })).toThrow(/not allowed/);
    const priv = { ...ecKey().export({ format: 'jwk' }), alg: 'ES256' };
    expect(() => checkCnfJwk(priv)).toThrow(/private member "d"/);
    expect(() => checkCnfJwk({ kty: 'oct', k: 'AAAA', alg: 'ES256' })).toThrow(WitSvidError);
    const rsa = { ...generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ format: 'jwk' }), alg: 'PS256' };
    expect(checkCnfJwk(rsa).jwk.kty).toBe('RSA');
    await expect(mintWitSvid({ signer, sub: WEB, cnfJwk: priv, expiresAt: inFive() })).rejects.toMatchObject({ reason: 'bad-cnf' });
    const token = (await mintWitSvid({ signer, sub: WEB, cnfJwk: pub, expiresAt: inFive() })).token;
    expect(await reasonOf(validateWitSvid(await resign(token, (_h, c) => ((c.cnf as { jwk: Record<string, unknown> }).jwk.alg = 'RS256')), forTd))).toBe('bad-cnf');
  });

  it('a WIT is no JWT-SVID and a JWT-SVID is no WIT, though one HSM key signs both', async () => {
    const bundle = TrustBundle.create({ trustDomain: 'example.org', jwtAuthorities: [[signer.keyId, signer.publicKey]] });
    const wit = (await mintWitSvid({ signer, sub: WEB, cnfJwk: await workloadJwk(), expiresAt: inFive() })).token;
    await expect(validateJwtSvid(wit, BundleSet.of([bundle]), 'anyone')).rejects.toMatchObject({ reason: 'bad-typ' });
    const jwt = await mintJwtSvid({ signer, sub: WEB, aud: ['x'], expiresAt: inFive() });
    expect(await reasonOf(validateWitSvid(jwt, forTd))).toBe('bad-typ');
  });

  it('WIT bundles: use wit-svid with the WIT kids; reading one skips other uses and refuses a kid twice', () => {
    const json = witBundleJson(authorities);
    const doc = JSON.parse(json) as { keys: Record<string, unknown>[] };
    expect(doc.keys.map((k) => [k.use, k.kid, k.d])).toEqual([['wit-svid', witKeyId(signer.keyId), undefined]]);
    expect([...witAuthoritiesFromJson(json).keys()]).toEqual([witKeyId(signer.keyId)]);
    const mixed = JSON.stringify({ keys: [...doc.keys, { ...doc.keys[0], use: 'jwt-svid', kid: signer.keyId }] });
    expect([...witAuthoritiesFromJson(mixed).keys()]).toEqual([witKeyId(signer.keyId)]);
    expect(() => witAuthoritiesFromJson(JSON.stringify({ keys: [doc.keys[0], doc.keys[0]] }))).toThrow(/appears twice/);
  });
});

/** The fake identity source with WIT-SVIDs, minted as the agent does: a key pair per token, signed with the JWT key. */
class WitSource extends FakeIdentitySource {
  readonly #ids = new Map<string, string>();
  witMints = 0;
  /** Per-entry WIT lifetime (default 300 s). */
  readonly ttlMs = new Map<string, number>();
  readonly #cache = new Map<string, { wit: IssuedWitSvid; at: number }>();

  override setEntry(entry: FakeEntry, leaf?: Parameters<FakeIdentitySource['setEntry']>[1]): void {
    this.#ids.set(entry.entryId, entry.spiffeId);
    super.setEntry(entry, leaf);
  }

  async fetchWitSvid(entryId: string): Promise<IssuedWitSvid> {
    const id = this.#ids.get(entryId);
    if (!id) throw new Error(`entry ${entryId} is gone`);
    const held = this.#cache.get(entryId);
    if (held && Date.now() < held.at + (held.wit.expiresAt.getTime() - held.at) / 2) return held.wit;
    const { publicJwk, privateJwk } = await witKeyPair();
    const expiresAt = new Date(Date.now() + (this.ttlMs.get(entryId) ?? 300_000));
    const { token } = await mintWitSvid({ signer: this.own.signer, sub: SpiffeId.parse(id), cnfJwk: JSON.parse(publicJwk), expiresAt });
    this.witMints++;
    const wit = { token, privateKeyJwk: privateJwk, expiresAt };
    this.#cache.set(entryId, { wit, at: Date.now() });
    return wit;
  }
}

describe('FetchWITSVID and FetchWITBundles over the Workload API socket', () => {
  const UID0 = [{ type: 'unix', value: 'uid:0' }];
  const source = new WitSource('example.org');
  let server: WorkloadApiServer;
  let client: WorkloadClient;

  beforeAll(async () => {
    source.setEntry({ entryId: 'web', spiffeId: 'spiffe://example.org/web', selectors: UID0, hint: 'web' });
    source.setEntry({ entryId: 'db', spiffeId: 'spiffe://example.org/db', selectors: UID0, hint: 'db' });
    source.setEntry({ entryId: 'other', spiffeId: 'spiffe://example.org/other', selectors: [{ type: 'unix', value: 'uid:4242' }] });
    const socketPath = tmpSocketPath();
    server = await startWorkloadApiServer({ socketPath, source, audit: () => undefined });
    client = workloadClient(socketPath);
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  it('every WIT-SVID of the caller verifies with python3-jwcrypto against the served WIT bundle: typ, kid, sub, exp, cnf = the key handed out', async () => {
    const wits = new StreamReader<WitSvidResponse>(client.FetchWITSVID({}, header()));
    const bundles = new StreamReader<WitBundlesResponse>(client.FetchWITBundles({}, header()));
    try {
      const res = await wits.next();
      const b = await bundles.next();
      expect(Object.keys(b.bundles)).toEqual(['spiffe://example.org']);
      expect(res.svids.map((s) => [s.spiffe_id, s.hint]).sort()).toEqual([
        ['spiffe://example.org/db', 'db'],
        ['spiffe://example.org/web', 'web'],
      ]);
      const results = await jwcrypto(b.bundles['spiffe://example.org']!, res.svids);
      for (const r of results) {
        expect(r).toMatchObject({
          verified: true,
          typ: 'wit+jwt',
          kid: witKeyId(source.own.signer.keyId),
          alg: 'ES256',
          sub: r.spiffe_id,
          exp_in_future: true,
          cnf_alg: 'ES256',
          key_is_private: true,
          pop_verified: true,
        });
      }
      // Each SVID has a key pair of its own.
      expect(new Set(res.svids.map((s) => JSON.parse(s.wit_svid_key).x)).size).toBe(2);
      // And keel's own validator agrees, with the bundle as served.
      const auth = witAuthoritiesFromJson(b.bundles['spiffe://example.org']!);
      for (const s of res.svids) expect((await validateWitSvid(s.wit_svid, () => auth)).id.toString()).toBe(s.spiffe_id);
    } finally {
      wits.cancel();
      bundles.cancel();
    }
  });

  it('python3-jwcrypto refuses a token whose cnf was swapped for another key, and one checked against a bundle without it', async () => {
    const res = await new StreamReader<WitSvidResponse>(client.FetchWITSVID({}, header())).next();
    const b = await new StreamReader<WitBundlesResponse>(client.FetchWITBundles({}, header())).next();
    const s = res.svids[0]!;
    const other = res.svids[1]!;
    const [bad] = await jwcrypto(b.bundles['spiffe://example.org']!, [{ ...s, wit_svid_key: other.wit_svid_key }]);
    expect(bad!.verified).toBe(false);
    expect(bad!.error).toMatch(/Invalid|Verification|signature/i);
    const [unknown] = await jwcrypto(witBundleJson(witAuthoritiesOf([['x', ecKey()]])), [s]);
    expect(unknown).toMatchObject({ verified: false, error: expect.stringMatching(/no wit-svid key/) });
  });

  it('spiffe_id selects one identity; one the caller does not hold is PermissionDenied, a malformed one InvalidArgument', async () => {
    const one = await new StreamReader<WitSvidResponse>(client.FetchWITSVID({ spiffe_id: 'spiffe://example.org/db' }, header())).next();
    expect(one.svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/db']);
    const denied = await new StreamReader<WitSvidResponse>(client.FetchWITSVID({ spiffe_id: 'spiffe://example.org/other' }, header())).next().catch((e: grpc.ServiceError) => e);
    expect((denied as grpc.ServiceError).code).toBe(grpc.status.PERMISSION_DENIED);
    const bad = await new StreamReader<WitSvidResponse>(client.FetchWITSVID({ spiffe_id: 'https://example.org/db' }, header())).next().catch((e: grpc.ServiceError) => e);
    expect((bad as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
    const noHeader = await new StreamReader<WitSvidResponse>(client.FetchWITSVID({}, header(null))).next().catch((e: grpc.ServiceError) => e);
    expect((noHeader as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('the stream sends fresh WIT-SVIDs (new key, new token) before the ones sent expire, and a message without an identity whose entry went', async () => {
    source.ttlMs.set('api', 4_000);
    source.setEntry({ entryId: 'api', spiffeId: 'spiffe://example.org/api', selectors: UID0, hint: 'api' });
    const exp = (token: string): number => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp;
    const only = new StreamReader<WitSvidResponse>(client.FetchWITSVID({ spiffe_id: 'spiffe://example.org/api' }, header()));
    const all = new StreamReader<WitSvidResponse>(client.FetchWITSVID({}, header()));
    try {
      const first = (await only.next()).svids[0]!;
      const renewed = (await only.next(10_000)).svids[0]!;
      expect(renewed.wit_svid).not.toBe(first.wit_svid);
      expect(renewed.wit_svid_key).not.toBe(first.wit_svid_key);
      // Sent while the previous token was still valid, at about half of its 4 s.
      expect(Date.now()).toBeLessThan(exp(first.wit_svid) * 1000);
      expect(exp(renewed.wit_svid)).toBeGreaterThanOrEqual(exp(first.wit_svid));

      let m = await all.next();
      expect(m.svids.map((s) => s.spiffe_id).sort()).toEqual(['spiffe://example.org/api', 'spiffe://example.org/db', 'spiffe://example.org/web']);
      source.removeEntry('db');
      do m = await all.next(10_000);
      while (m.svids.some((s) => s.spiffe_id.endsWith('/db')));
      expect(m.svids.map((s) => s.spiffe_id).sort()).toEqual(['spiffe://example.org/api', 'spiffe://example.org/web']);
    } finally {
      only.cancel();
      all.cancel();
    }
  }, 40_000);
});
