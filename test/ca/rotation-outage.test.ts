/**
 * Rotation across a server outage (issue 15): keys in a real SoftHSM token,
 * the journal in a real SQLite store, time from a fake clock. A server that
 * was down across prepare→activate never activates a key that has not been in
 * its bundle for the minimum publication time, as long as the old key can
 * still sign; only an expired active key forces an early activation.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm } from '../../src/hsm/index.js';
import { CaConfigError, CertificateAuthority, DEFAULT_SCHEDULE, deferredActivation, nextRotationStep, type AuthoritySlot, type PublicationRules } from '../../src/server/ca/index.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import { StoreCaJournal } from '../../src/server/server.js';
import { caTestToken, ecKey, makeCsr, FakeClock, type CaTestToken } from './helpers.js';

describe('activation waits for publication (pure)', () => {
  const slot = (o: Partial<AuthoritySlot>): AuthoritySlot => ({ index: 1, state: 'active', notBeforeMs: 0, notAfterMs: 600_000, issuedUntilMs: null, ...o });
  const rules: PublicationRules = { minPublishMs: 100_000, dropGraceMs: 10_000 };
  const s = DEFAULT_SCHEDULE;
  const prepared = (since: number) => slot({ index: 2, state: 'prepared', notBeforeMs: since, notAfterMs: since + 600_000, publishedSinceMs: since });

  it('activates on schedule when the prepared key was published long enough', () => {
    expect(nextRotationStep([slot({}), prepared(300_000)], 500_000, s, rules)).toEqual({ kind: 'activate', index: 2 });
  });
  it('holds activation back past the schedule while the key is under-published, with full-length SVIDs, then cut short', () => {
    const two = [slot({}), prepared(450_000)];
    expect(nextRotationStep(two, 500_000, s, rules)).toBeUndefined();
    expect(deferredActivation(two, 500_000, s, rules, 100_000)).toEqual({ index: 2, publishedMs: 50_000, fullTtl: true });
    // Old key has less than one SVID TTL left: it still signs (SVIDs end with it), the new one is not yet known widely enough.
    expect(nextRotationStep(two, 540_000, s, rules)).toBeUndefined();
    expect(deferredActivation(two, 540_000, s, rules, 100_000)).toMatchObject({ fullTtl: false });
    expect(nextRotationStep(two, 550_000, s, rules)).toEqual({ kind: 'activate', index: 2 });
    expect(deferredActivation(two, 550_000, s, rules, 100_000)).toBeUndefined();
  });
  it('activates an under-published key only when the active key expired, and says by how much it fell short', () => {
    expect(nextRotationStep([slot({}), prepared(590_000)], 600_000, s, rules)).toEqual({ kind: 'activate', index: 2, underPublishedMs: 90_000 });
    // First start (no key ever active): nobody holds a bundle yet, so nothing is "short".
    expect(nextRotationStep([prepared(0)], 0, s, rules)).toEqual({ kind: 'activate', index: 2 });
  });
  it('keeps an old key in the bundle for the clock-skew grace past its last SVID', () => {
    const old = [slot({ state: 'old', issuedUntilMs: 550_000 }), slot({ index: 2, notBeforeMs: 300_000, notAfterMs: 900_000 })];
    expect(nextRotationStep(old, 559_999, s, rules)).toBeUndefined();
    expect(nextRotationStep(old, 560_000, s, rules)).toMatchObject({ kind: 'drop', index: 1 });
  });
});

describe('a CA restarted across prepare→activate (SoftHSM, SQLite journal)', () => {
  let t: CaTestToken;
  let hsm: Hsm;
  let dir: string;
  const csr = makeCsr(ecKey());
  // L = 1200 s: prepare at t=600, activate at t=1000; SVIDs up to 100 s, so the minimum publication is 100 s.
  const x509 = { caTtlSeconds: 1200, svidMaxTtlSeconds: 100 };
  const jwt = { keyTtlSeconds: 1200, svidMaxTtlSeconds: 100 };

  beforeAll(async () => {
    t = await caTestToken('keel-outage');
    hsm = await Hsm.open(t.config);
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-outage-'));
  });
  afterAll(async () => {
    await hsm?.close();
    await t?.tok.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  interface Run {
    readonly clock: FakeClock;
    readonly warnings: string[];
    readonly store: SqliteDatastore;
    open(): Promise<CertificateAuthority>;
  }
  const setup = (name: string, t0: number): Run => {
    const clock = new FakeClock(t0);
    const warnings: string[] = [];
    const store = SqliteDatastore.open({ path: join(dir, `${name}.db`) });
    return {
      clock,
      warnings,
      store,
      open: () =>
        CertificateAuthority.open({
          trustDomain: 'example.org',
          keys: hsm,
          journal: new StoreCaJournal(store, 'spiffe://example.org/keel/server'),
          keyLabelPrefix: name,
          now: clock.now,
          rotationCheckIntervalMs: 0,
          backdateSeconds: 0,
          x509,
          jwt,
          onWarning: (m) => warnings.push(m),
        }),
    };
  };

  /**
   * Drives the restarted CA in 10 s steps to `untilS`, rotating and issuing an
   * X.509-SVID and a JWT-SVID at each step; returns, per key, when it was first
   * in the bundle and when it first signed.
   */
  async function walk(ca: CertificateAuthority, r: Run, t0: number, fromS: number, untilS: number) {
    const firstInBundle = new Map<string, number>();
    const firstSigned = new Map<string, number>();
    const caLabelByDer = () => new Map(ca.status().filter((k) => k.kind === 'x509').map((k) => [k.certificateDer!.toString('base64'), k.label]));
    const jwtLabelByKid = () => new Map(ca.status().filter((k) => k.kind === 'jwt').map((k) => [k.kid!, k.label]));
    const svids: { at: number; label: string; notAfter: number }[] = [];
    for (let s = fromS; s <= untilS; s += 10) {
      r.clock.ms = t0 + s * 1000;
      await ca.rotate();
      const b = ca.bundle();
      const byDer = caLabelByDer();
      for (const c of b.x509Authorities) firstInBundle.has(byDer.get(c.raw.toString('base64'))!) || firstInBundle.set(byDer.get(c.raw.toString('base64'))!, r.clock.ms);
      const byKid = jwtLabelByKid();
      for (const kid of b.jwtAuthorities.keys()) firstInBundle.has(byKid.get(kid)!) || firstInBundle.set(byKid.get(kid)!, r.clock.ms);
      const x = await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
      // The leaf verifies with a CA certificate of the bundle served at this moment.
      expect(b.x509Authorities.some((c) => new X509Certificate(x.certDer).verify(c.publicKey))).toBe(true);
      const j = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/w', audience: 'a', ttlSeconds: 100 });
      expect(b.jwtAuthorities.has(j.kid)).toBe(true);
      for (const label of [x.caKeyLabel, j.keyLabel]) if (!firstSigned.has(label)) firstSigned.set(label, r.clock.ms);
      svids.push({ at: s, label: x.caKeyLabel, notAfter: x.notAfter.getTime() });
    }
    return { firstInBundle, firstSigned, svids };
  }

  it('down from before the prepare point to past the activation point: the new keys are published ≥ the minimum before they sign', async () => {
    const t0 = Date.UTC(2030, 0, 1);
    const r = setup('across-both', t0);
    const first = await r.open();
    expect(first.minPublishMs).toEqual({ x509: 100_000, jwt: 100_000 });
    r.clock.ms = t0 + 500_000;
    await first.rotate();
    expect(first.status().map((k) => k.state)).toEqual(['active', 'active']);
    await first.close();

    // Down from t=500 to t=1010: both the prepare (t=600) and the activation point (t=1000) passed.
    r.clock.ms = t0 + 1_010_000;
    const ca = await r.open();
    // One step at restart: key 2 prepared and published, key 1 still the one that signs.
    expect(ca.status().map((k) => `${k.label}:${k.state}`)).toEqual([
      'across-both-x509-ca-1:active', 'across-both-x509-ca-2:prepared', 'across-both-jwt-1:active', 'across-both-jwt-2:prepared',
    ]);
    expect(r.warnings.some((w) => /held back/.test(w))).toBe(true);
    const w = await walk(ca, r, t0, 1010, 1190);
    for (const label of ['across-both-x509-ca-2', 'across-both-jwt-2']) {
      expect(w.firstSigned.has(label)).toBe(true);
      expect(w.firstSigned.get(label)! - w.firstInBundle.get(label)!).toBeGreaterThanOrEqual(100_000);
    }
    // Key 1 signed until t=1100 and never past its own end (SVIDs cut short at t=1200).
    expect(w.svids.filter((v) => v.label === 'across-both-x509-ca-1').every((v) => v.notAfter <= t0 + 1_200_000)).toBe(true);
    expect(w.svids.find((v) => v.at === 1110)!.label).toBe('across-both-x509-ca-2');
    expect(r.warnings.some((w) => /less than the minimum/.test(w))).toBe(false);
    await ca.close();
    await r.store.close();
  });

  it('down from just after the prepare point to past the activation point: publication counts from the restart', async () => {
    const t0 = Date.UTC(2031, 0, 1);
    const r = setup('after-prepare', t0);
    const first = await r.open();
    r.clock.ms = t0 + 600_000;
    await first.rotate();
    expect(first.status().filter((k) => k.state === 'prepared')).toHaveLength(2);
    await first.close();

    // 20 s of publication before the outage: agents that were reconnecting then never saw key 2.
    r.clock.ms = t0 + 1_000_000;
    const ca = await r.open();
    expect(ca.status().filter((k) => k.state === 'prepared')).toHaveLength(2);
    const w = await walk(ca, r, t0, 1000, 1190);
    for (const label of ['after-prepare-x509-ca-2', 'after-prepare-jwt-2']) {
      expect(w.firstSigned.get(label)! - w.firstInBundle.get(label)!).toBeGreaterThanOrEqual(100_000);
      expect(w.firstSigned.get(label)).toBe(t0 + 1_100_000);
    }
    await ca.close();
    await r.store.close();
  });

  it('down until the old key has less than the minimum left: it signs to its end, then the new key activates with a warning', async () => {
    const t0 = Date.UTC(2032, 0, 1);
    const r = setup('late', t0);
    const first = await r.open();
    await first.close();

    r.clock.ms = t0 + 1_150_000;
    const ca = await r.open();
    const w = await walk(ca, r, t0, 1150, 1210);
    const byOld = w.svids.filter((v) => v.label === 'late-x509-ca-1');
    expect(byOld.map((v) => v.at)).toEqual([1150, 1160, 1170, 1180, 1190]);
    expect(byOld.every((v) => v.notAfter === t0 + 1_200_000)).toBe(true);
    expect(w.firstSigned.get('late-x509-ca-2')).toBe(t0 + 1_200_000);
    expect(r.warnings.some((m) => /cut short/.test(m))).toBe(true);
    expect(r.warnings.some((m) => /late-x509-ca-2 after less than the minimum publication time/.test(m))).toBe(true);
    await ca.close();
    await r.store.close();
  });

  it('refuses a minimum publication time the schedule cannot keep', async () => {
    const r = setup('bad', Date.UTC(2033, 0, 1));
    const err = await CertificateAuthority.open({
      trustDomain: 'example.org', keys: hsm, journal: new StoreCaJournal(r.store, 'x'), rotationCheckIntervalMs: 0, x509, jwt, minPublishSeconds: 401,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CaConfigError);
    expect((err as CaConfigError).path).toBe('minPublishSeconds');
    await r.store.close();
  });
});
