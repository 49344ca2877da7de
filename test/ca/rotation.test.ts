/**
 * Key rotation driven by a fake clock, with the keys in a real SoftHSM token:
 * prepare at 1/2, activate at 1/6, old keys kept while SVIDs they signed are
 * valid, then removed from the bundle and destroyed in the HSM.
 */
import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm } from '../../src/hsm/index.js';
import { CertificateAuthority, FileCaJournal, nextRotationStep, DEFAULT_SCHEDULE, type AuthoritySlot } from '../../src/server/ca/index.js';
import { bundleFromX509Der, endorsedAuthorities, type TrustBundle } from '../../src/spiffe/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { caTestToken, ecKey, makeCsr, FakeClock, type CaTestToken } from './helpers.js';

describe('rotation schedule (pure)', () => {
  const slot = (o: Partial<AuthoritySlot>): AuthoritySlot => ({ index: 1, state: 'active', notBeforeMs: 0, notAfterMs: 600_000, issuedUntilMs: null, ...o });
  it('prepares at half the life remaining, activates at a sixth, drops old keys after their last SVID', () => {
    const s = DEFAULT_SCHEDULE;
    expect(nextRotationStep([], 0, s)).toEqual({ kind: 'prepare' });
    expect(nextRotationStep([slot({ state: 'prepared' })], 0, s)).toEqual({ kind: 'activate', index: 1 });
    expect(nextRotationStep([slot({})], 299_999, s)).toBeUndefined();
    expect(nextRotationStep([slot({})], 300_000, s)).toEqual({ kind: 'prepare' });
    const two = [slot({}), slot({ index: 2, state: 'prepared', notBeforeMs: 300_000, notAfterMs: 900_000 })];
    expect(nextRotationStep(two, 499_999, s)).toBeUndefined();
    expect(nextRotationStep(two, 500_000, s)).toEqual({ kind: 'activate', index: 2 });
    const old = [slot({ state: 'old', issuedUntilMs: 550_000 }), slot({ index: 2, notBeforeMs: 300_000, notAfterMs: 900_000 })];
    expect(nextRotationStep(old, 549_999, s)).toBeUndefined();
    expect(nextRotationStep(old, 550_000, s)).toMatchObject({ kind: 'drop', index: 1 });
    expect(nextRotationStep([slot({ state: 'old' }), slot({ index: 2, notAfterMs: 900_000 })], 1, s)).toMatchObject({ kind: 'drop', index: 1 });
  });
  it('after a long downtime, activates the prepared key or makes a new one', () => {
    const s = DEFAULT_SCHEDULE;
    expect(nextRotationStep([slot({})], 700_000, s)).toEqual({ kind: 'prepare' });
    expect(nextRotationStep([slot({}), slot({ index: 2, state: 'prepared', notAfterMs: 900_000 })], 700_000, s)).toEqual({ kind: 'activate', index: 2 });
    expect(nextRotationStep([slot({ state: 'prepared', notAfterMs: 5 })], 10, s)).toMatchObject({ kind: 'drop' });
  });
});

describe('rotation on SoftHSM with a fake clock', () => {
  let t: CaTestToken;
  let hsm: Hsm;
  let dir: string;
  let ca: CertificateAuthority;
  const t0 = Date.UTC(2030, 0, 1);
  const clock = new FakeClock(t0);
  const bundles: TrustBundle[] = [];
  const at = (s: number): Promise<void> => {
    clock.ms = t0 + s * 1000;
    return ca.rotate();
  };
  const states = (kind: 'x509' | 'jwt') => ca.status().filter((s) => s.kind === kind).map((s) => `${s.index}:${s.state}`);

  beforeAll(async () => {
    t = await caTestToken();
    hsm = await Hsm.open(t.config);
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-rot-'));
    // L = 600 s for both keys; SVIDs up to 100 s. Backdating off so the numbers read plainly.
    ca = await CertificateAuthority.open({
      trustDomain: 'example.org',
      keys: hsm,
      journal: new FileCaJournal(dir),
      now: clock.now,
      rotationCheckIntervalMs: 0,
      backdateSeconds: 0,
      x509: { caTtlSeconds: 600, svidMaxTtlSeconds: 100 },
      jwt: { keyTtlSeconds: 600, svidMaxTtlSeconds: 100 },
    });
    ca.onBundleChange((b) => bundles.push(b));
  });
  afterAll(async () => {
    await ca?.close();
    await hsm?.close();
    await t?.tok.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('walks the whole schedule for the X.509 CA key and the JWT key', async () => {
    expect(states('x509')).toEqual(['1:active']);
    expect(states('jwt')).toEqual(['1:active']);
    const startSequence = ca.bundle().sequence!;
    const csr = makeCsr(ecKey());
    const first = await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
    expect(first.caKeyLabel).toBe('keel-x509-ca-1');

    await at(299);
    expect(states('x509')).toEqual(['1:active']);
    expect(bundles).toHaveLength(0);

    // Half the life left: key 2 is made in the HSM and published, not yet used.
    await at(300);
    expect(states('x509')).toEqual(['1:active', '2:prepared']);
    expect(states('jwt')).toEqual(['1:active', '2:prepared']);
    expect(await hsm.findKey({ label: 'keel-x509-ca-2' })).toBeDefined();
    expect(await hsm.findKey({ label: 'keel-jwt-2' })).toBeDefined();
    expect(bundles).toHaveLength(1);
    expect(bundles[0]!.x509Authorities).toHaveLength(2);
    expect(bundles[0]!.jwtAuthorities.size).toBe(2);
    expect(bundles[0]!.sequence).toBe(startSequence + 1n);
    const stillOne = await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
    expect(stillOne.caKeyLabel).toBe('keel-x509-ca-1');

    // Last signatures of key 1: an SVID to t=550 and a JWT to t=540.
    clock.ms = t0 + 450_000;
    const last = await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
    expect(last.notAfter.getTime()).toBe(t0 + 550_000);
    const lastJwt = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/w', audience: 'x', ttlSeconds: 90 });

    await at(499);
    expect(states('x509')).toEqual(['1:active', '2:prepared']);

    // A sixth of the life left: key 2 signs, key 1 is old but still in the bundle.
    await at(500);
    expect(states('x509')).toEqual(['1:old', '2:active']);
    expect(states('jwt')).toEqual(['1:old', '2:active']);
    const byTwo = await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
    expect(byTwo.caKeyLabel).toBe('keel-x509-ca-2');
    const caTwo = ca.status().find((s) => s.label === 'keel-x509-ca-2')!.certificateDer!;
    expect(new X509Certificate(byTwo.certDer).verify(new X509Certificate(caTwo).publicKey)).toBe(true);
    // Key 2's rollover certificate: its name and key, signed by key 1, valid while key 1 is.
    const caOne = new X509Certificate(ca.status().find((s) => s.label === 'keel-x509-ca-1')!.certificateDer!);
    const rollover = ca.rolloverCertificates().map((d) => new X509Certificate(d));
    expect(rollover).toHaveLength(1);
    expect(rollover[0]!.subject).toBe(new X509Certificate(caTwo).subject);
    expect(rollover[0]!.issuer).toBe(caOne.subject);
    expect(rollover[0]!.publicKey.equals(new X509Certificate(caTwo).publicKey)).toBe(true);
    expect(rollover[0]!.verify(caOne.publicKey)).toBe(true);
    expect(rollover[0]!.checkIssued(caOne)).toBe(true);
    expect(rollover[0]!.ca).toBe(true);
    expect(Date.parse(rollover[0]!.validTo)).toBe(Date.parse(caOne.validTo));
    // The leaves of key 2 verify through it from key 1 alone (as an agent that missed the rotation checks them).
    expect(endorsedAuthorities(rollover, bundleFromX509Der('example.org', caOne.raw), TrustDomain.parse('example.org'), { now: new Date(clock.ms) }).map((e) => e.authority.raw)).toEqual([rollover[0]!.raw]);
    const jwtTwo = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/w', audience: 'x', ttlSeconds: 60 });
    expect(jwtTwo.kid).not.toBe(lastJwt.kid);
    expect(ca.bundle().x509Authorities).toHaveLength(2);
    expect(ca.bundle().jwtAuthorities.has(lastJwt.kid)).toBe(true);

    // The old JWT key goes once its last token expired (t=540), the old CA key at t=550.
    await at(539);
    expect(ca.bundle().jwtAuthorities.has(lastJwt.kid)).toBe(true);
    await at(540);
    expect(ca.bundle().jwtAuthorities.has(lastJwt.kid)).toBe(false);
    expect(await hsm.findKey({ label: 'keel-jwt-1' })).toBeUndefined();
    expect(await hsm.findKey({ label: 'keel-x509-ca-1' })).toBeDefined();
    await at(549);
    expect(states('x509')).toEqual(['1:old', '2:active']);
    await at(550);
    expect(states('x509')).toEqual(['2:active']);
    expect(ca.bundle().x509Authorities).toHaveLength(1);
    expect(await hsm.findKey({ label: 'keel-x509-ca-1' })).toBeUndefined();
    const seqs = bundles.map((b) => b.sequence);
    expect(seqs).toEqual([...seqs].sort((a, b) => (a! < b! ? -1 : 1)));
    expect(bundles.at(-1)!.x509Authorities).toHaveLength(1);

    // Key 2 was prepared at t=300 and lives to t=900: its successor comes at t=600.
    await at(599);
    expect(states('x509')).toEqual(['2:active']);
    // Key 1 is gone but its rollover certificate of key 2 is served until key 1's end (t=600).
    expect(ca.rolloverCertificates()).toHaveLength(1);
    await at(600);
    expect(states('x509')).toEqual(['2:active', '3:prepared']);
    expect(ca.rolloverCertificates()).toEqual([]);

    // Key 3's rollover certificate (signed by key 2) is in the journal: a restart on a copy of it finds the same one.
    const three = ca.status().find((s) => s.label === 'keel-x509-ca-3')!;
    expect(three.rolloverCertificatesDer).toHaveLength(1);
    expect(new X509Certificate(three.rolloverCertificatesDer![0]!).verify(new X509Certificate(caTwo).publicKey)).toBe(true);
    const copy = await mkdtemp(join(tmpdir(), 'keel-ca-rot-copy-'));
    try {
      await copyFile(join(dir, 'ca-journal.json'), join(copy, 'ca-journal.json'));
      const again = await CertificateAuthority.open({
        trustDomain: 'example.org',
        keys: hsm,
        journal: new FileCaJournal(copy),
        now: clock.now,
        rotationCheckIntervalMs: 0,
        backdateSeconds: 0,
        x509: { caTtlSeconds: 600, svidMaxTtlSeconds: 100 },
        jwt: { keyTtlSeconds: 600, svidMaxTtlSeconds: 100 },
      });
      try {
        const restored = again.status().find((s) => s.label === 'keel-x509-ca-3')!;
        expect(restored.rolloverCertificatesDer!.map((d) => d.toString('hex'))).toEqual(three.rolloverCertificatesDer!.map((d) => d.toString('hex')));
      } finally {
        await again.close();
      }
    } finally {
      await rm(copy, { recursive: true, force: true });
    }
  });

  it('old keys whose SVIDs expired, or that signed nothing, leave at activation; SVIDs clamp to the CA end', async () => {
    // Key 3 (prepared t=600, ends t=1200) activates at t=800; key 2 signed nothing valid past t=600.
    await at(800);
    expect(states('x509')).toEqual(['3:active']);
    expect(states('jwt')).toEqual(['3:active']);
    expect(await hsm.findKey({ label: 'keel-x509-ca-2' })).toBeUndefined();
    expect(await hsm.findKey({ label: 'keel-jwt-2' })).toBeUndefined();
    // Key 4 is prepared at t=900 and activates at t=1100; key 3 never signed anything.
    await at(900);
    expect(states('x509')).toEqual(['3:active', '4:prepared']);
    await at(1100);
    expect(ca.status().find((x) => x.label === 'keel-x509-ca-3')).toBeUndefined();
    expect(states('x509')).toEqual(['4:active']);
    expect(await hsm.findKey({ label: 'keel-x509-ca-3' })).toBeUndefined();
    // Key 4 ends at t=1500. Without rotation running, a long SVID is clamped to that end.
    clock.ms = t0 + 1_450_000;
    const s = await ca.issueX509Svid({ csr: makeCsr(ecKey()), spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
    expect(s.notAfter.getTime()).toBe(t0 + 1_500_000);
    const j = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/w', audience: 'x', ttlSeconds: 100 });
    expect(j.expiresAt.getTime()).toBe(t0 + 1_500_000);
  });
});
