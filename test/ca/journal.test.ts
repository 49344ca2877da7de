/**
 * The journal: atomic file writes, strict loading, and the issued-until bound
 * that lets a restarted CA keep old keys as long as their SVIDs live. Keys are
 * in memory here (pure journal logic); the HSM restart is in restart.test.ts.
 */
import { mkdtemp, readdir, rm, writeFile, stat, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, CaStateError, FileCaJournal, MemoryCaJournal, parseCsr, type CaJournal, type CaJournalState } from '../../src/server/ca/index.js';
import { ecKey, makeCsr, MemoryKeyStore, FakeClock } from './helpers.js';

const opts = (keys: MemoryKeyStore, journal: CaJournal, clock: FakeClock) => ({
  trustDomain: 'example.org',
  keys,
  journal,
  now: clock.now,
  rotationCheckIntervalMs: 0,
  x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
  jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
});

/** Records every saved state and makes each save take a while, as fsync does. */
class SlowJournal implements CaJournal {
  saved: CaJournalState[] = [];
  async load(): Promise<CaJournalState | undefined> {
    return this.saved.at(-1);
  }
  async save(s: CaJournalState): Promise<void> {
    await new Promise((r) => setTimeout(r, 5));
    this.saved.push(structuredClone(s));
  }
}

describe('CA journal', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-journal-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes the file atomically with mode 0600 and no temp files left, and reads it back', async () => {
    const keys = new MemoryKeyStore();
    const j = new FileCaJournal(join(dir, 'a'));
    const ca = await CertificateAuthority.open(opts(keys, j, new FakeClock(Date.UTC(2030, 0, 1))));
    await ca.close();
    expect(await readdir(join(dir, 'a'))).toEqual(['ca-journal.json']);
    expect((await stat(j.path)).mode & 0o777).toBe(0o600);
    const state = (await j.load())!;
    expect(state.x509.map((a) => [a.label, a.state])).toEqual([['keel-x509-ca-1', 'active']]);
    expect(state.jwt.map((a) => [a.label, a.state])).toEqual([['keel-jwt-1', 'active']]);
  });

  it('refuses a corrupt or ill-formed journal with CaStateError naming the place', async () => {
    const j = new FileCaJournal(join(dir, 'bad'));
    await new FileCaJournal(join(dir, 'bad')).save({ version: 1, trustDomain: 'example.org', bundleSequence: 0, nextIndex: { x509: 1, jwt: 1 }, x509: [], jwt: [] });
    await writeFile(j.path, '{"version":1,');
    await expect(j.load()).rejects.toThrow(CaStateError);
    await writeFile(j.path, JSON.stringify({ version: 1, trustDomain: 'example.org', bundleSequence: 0, nextIndex: { x509: 1, jwt: 1 }, x509: [{ index: 1 }], jwt: [] }));
    await expect(j.load()).rejects.toThrow(/x509\.0\./);
    await writeFile(j.path, JSON.stringify({ version: 1, trustDomain: 'example.org', bundleSequence: 0, nextIndex: { x509: 1, jwt: 1 }, x509: [], jwt: [], privateKey: 'x' }));
    await expect(j.load()).rejects.toThrow(CaStateError);
  });

  it('a busy CA writes the journal about once per SVID lifetime, not once per SVID', async () => {
    const clock = new FakeClock(Date.UTC(2030, 0, 1));
    const j = new MemoryCaJournal();
    const ca = await CertificateAuthority.open(opts(new MemoryKeyStore(), j, clock));
    const csr = parseCsr(makeCsr(ecKey()));
    const start = j.saves;
    for (let i = 0; i < 100; i++) {
      await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 3600 });
      clock.advance(10);
    }
    // 1000 s of issuing 1-hour SVIDs: the first one raises the bound to 2 h ahead; nothing more is needed.
    expect(j.saves - start).toBe(1);
    clock.advance(3600);
    await ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 3600 });
    expect(j.saves - start).toBe(2);
    await ca.close();
  });

  it('an SVID is handed out only once the journal bound covering it is durable, even under concurrency', async () => {
    const clock = new FakeClock(Date.UTC(2030, 0, 1));
    const j = new SlowJournal();
    const ca = await CertificateAuthority.open(opts(new MemoryKeyStore(), j, clock));
    const csr = parseCsr(makeCsr(ecKey()));
    const checks: Promise<void>[] = [];
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 20; i++) {
        checks.push(
          ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/w', ttlSeconds: 1 + i * 150 }).then((s) => {
            const bound = j.saved.at(-1)!.x509[0]!.issuedUntilMs!;
            expect(bound).toBeGreaterThanOrEqual(s.notAfter.getTime());
          }),
        );
      }
      clock.advance(2 * 3600);
    }
    await Promise.all(checks);
    await ca.close();
  });

  it('a restarted CA keeps an old key until the journaled bound of what it signed', async () => {
    const clock = new FakeClock(Date.UTC(2030, 0, 1));
    const keys = new MemoryKeyStore();
    const j = new FileCaJournal(join(dir, 'restart'));
    const first = await CertificateAuthority.open({ ...opts(keys, j, clock), x509: { caTtlSeconds: 600, svidMaxTtlSeconds: 100 }, jwt: { keyTtlSeconds: 600, svidMaxTtlSeconds: 100 } });
    clock.advance(450);
    await first.rotate();
    const last = await first.issueX509Svid({ csr: makeCsr(ecKey()), spiffeId: 'spiffe://example.org/w', ttlSeconds: 100 });
    await first.close();

    clock.advance(60); // t=510: past activation of key 2 (t=500)
    // Without a minimum publication time, key 2 activates at once (the rule that holds it back is tested in rotation-outage.test.ts).
    const second = await CertificateAuthority.open({ ...opts(keys, j, clock), minPublishSeconds: 0, x509: { caTtlSeconds: 600, svidMaxTtlSeconds: 100 }, jwt: { keyTtlSeconds: 600, svidMaxTtlSeconds: 100 } });
    const old = second.status().find((s) => s.label === 'keel-x509-ca-1')!;
    expect(old.state).toBe('old');
    expect(old.issuedUntil!.getTime()).toBeGreaterThanOrEqual(last.notAfter.getTime());
    expect(keys.destroyed).not.toContain('keel-x509-ca-1');
    clock.ms = old.issuedUntil!.getTime();
    await second.rotate();
    expect(second.status().find((s) => s.label === 'keel-x509-ca-1')).toBeUndefined();
    expect(keys.destroyed).toContain('keel-x509-ca-1');
    // The journal no longer names the destroyed key.
    expect(await readFile(j.path, 'utf8')).not.toContain('keel-x509-ca-1"');
    await second.close();
  });

  it('the timer runs rotation by itself and announces the new bundle', async () => {
    const clock = new FakeClock(Date.UTC(2030, 0, 1));
    const ca = await CertificateAuthority.open({ ...opts(new MemoryKeyStore(), new MemoryCaJournal(), clock), rotationCheckIntervalMs: 20 });
    const changed = new Promise<number>((resolve) => ca.onBundleChange((b) => resolve(b.x509Authorities.length)));
    clock.advance(43_200); // half the CA's day: the next key is due
    expect(await changed).toBe(2);
    await ca.close();
  });
});
