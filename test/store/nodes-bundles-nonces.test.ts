import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ConflictError,
  InvalidRecordError,
  LATEST_SCHEMA_VERSION,
  NodeBannedError,
  NodeNotActiveError,
  NotFoundError,
  SchemaTooNewError,
  SqliteDatastore,
  StoreError,
} from '../../src/server/store/index.js';
import { agent, attestation, ekHash, id, openTemp, sel, tempDir, TrustDomain, type TempStore } from './helpers.js';

let t: TempStore;
let now = new Date('2030-01-01T00:00:00Z');
beforeEach(() => {
  now = new Date('2030-01-01T00:00:00Z');
  t = openTemp(() => now);
});
afterEach(async () => {
  await t.cleanup();
});

describe('attested nodes', () => {
  it('records an attestation, renews it, and lists by status and selectors', async () => {
    const n = await t.store.recordAttestation(attestation(1));
    expect(n.status).toEqual({ kind: 'active', svid: { serial: '01', notAfter: new Date('2030-01-02T00:00:00Z') } });
    expect(n.firstSeen).toEqual(now);
    expect(n.lastQuote.clock).toBe(1000n);

    now = new Date('2030-01-01T12:00:00Z');
    const renewed = await t.store.renewNode(agent(1), {
      svid: { serial: '02', notAfter: new Date('2030-01-03T00:00:00Z') },
      quote: { clock: 2n ** 63n + 5n, resetCount: 1, restartCount: 1 },
      selectors: sel('tpm:policy:secure-boot'),
      ifSvidSerial: '01',
    });
    expect(renewed.status.kind === 'active' && renewed.status.svid.serial).toBe('02');
    expect(renewed.lastQuote.clock).toBe(2n ** 63n + 5n); // a UINT64 above int64 survives
    expect(renewed.lastSeen).toEqual(now);
    expect(renewed.firstSeen).toEqual(new Date('2030-01-01T00:00:00Z'));
    // a second renewal presenting the old SVID loses
    await expect(
      t.store.renewNode(agent(1), { svid: { serial: '03', notAfter: now }, quote: renewed.lastQuote, selectors: [], ifSvidSerial: '01' }),
    ).rejects.toBeInstanceOf(ConflictError);

    await t.store.recordAttestation(attestation(2));
    await t.store.banNode(agent(2), 'EK reported stolen');
    expect((await t.store.listNodes({ status: 'active' })).items.map((x) => x.agentId.toString())).toEqual([agent(1).toString()]);
    expect((await t.store.listNodes({ selectors: { match: 'exact', selectors: sel('tpm:policy:secure-boot') } })).items).toHaveLength(1);
    expect((await t.store.getNodeByEkHash(ekHash(2)))?.status.kind).toBe('banned');
    await expect(t.store.renewNode(agent(9), { svid: { serial: '1', notAfter: now }, quote: n.lastQuote, selectors: [] })).rejects.toBeInstanceOf(
      NotFoundError,
    );
  });

  it('evicts (re-attestation allowed), bans (refused until unbanned) and unbans', async () => {
    await t.store.recordAttestation(attestation(1));
    const ev = await t.store.evictNode(agent(1));
    expect(ev.status.kind).toBe('evicted');
    await expect(
      t.store.renewNode(agent(1), { svid: { serial: '05', notAfter: now }, quote: ev.lastQuote, selectors: [] }),
    ).rejects.toBeInstanceOf(NodeNotActiveError);
    expect((await t.store.recordAttestation(attestation(1, '06'))).status.kind).toBe('active');

    const banned = await t.store.banNode(agent(1), 'quote clock went backwards');
    expect(banned.status).toMatchObject({ kind: 'banned', reason: 'quote clock went backwards' });
    const err = await t.store.recordAttestation(attestation(1, '07')).catch((e) => e);
    expect(err).toBeInstanceOf(NodeBannedError);
    expect((await t.store.getNode(agent(1)))?.status.kind).toBe('banned'); // the refused attestation changed nothing
    await expect(t.store.evictNode(agent(1))).rejects.toBeInstanceOf(ConflictError);

    expect((await t.store.unbanNode(agent(1))).status.kind).toBe('evicted');
    await expect(t.store.unbanNode(agent(1))).rejects.toBeInstanceOf(ConflictError);
    expect((await t.store.recordAttestation(attestation(1, '08'))).status.kind).toBe('active');
    await expect(t.store.banNode(agent(1), ' ')).rejects.toBeInstanceOf(InvalidRecordError);
    await expect(t.store.evictNode(agent(3))).rejects.toBeInstanceOf(NotFoundError);
  });

  it('keeps one node per EK and rejects malformed attestation records', async () => {
    await t.store.recordAttestation(attestation(1));
    await expect(t.store.recordAttestation({ ...attestation(2), ekPublicHash: ekHash(1) })).rejects.toBeInstanceOf(ConflictError);
    await expect(t.store.recordAttestation({ ...attestation(3), ekPublicHash: 'ABC' })).rejects.toBeInstanceOf(InvalidRecordError);
    await expect(t.store.recordAttestation({ ...attestation(3), quote: { clock: -1n, resetCount: 0, restartCount: 0 } })).rejects.toBeInstanceOf(
      InvalidRecordError,
    );
    expect(await t.store.getNode(agent(2))).toBeUndefined();
    expect(await t.store.getNode(agent(3))).toBeUndefined();
  });
});

describe('bundles and the CA journal', () => {
  const own = TrustDomain.parse('example.org');
  const fed = TrustDomain.parse('partner.test');

  it('keeps the own bundle with a strictly increasing sequence', async () => {
    expect(await t.store.getOwnBundle(own)).toBeUndefined();
    await t.store.setOwnBundle(own, '{"keys":[],"spiffe_sequence":1}', 1);
    await expect(t.store.setOwnBundle(own, '{"keys":[]}', 1)).rejects.toBeInstanceOf(ConflictError);
    const b = await t.store.setOwnBundle(own, '{"keys":[],"spiffe_sequence":2}', 2);
    expect(b.sequence).toBe(2);
    expect((await t.store.getOwnBundle(own))?.jwks).toContain('"spiffe_sequence":2');
    await expect(t.store.setOwnBundle(own, 'not json', 3)).rejects.toBeInstanceOf(InvalidRecordError);
    await expect(t.store.setFederatedBundle(own, '{"keys":[]}')).rejects.toBeInstanceOf(ConflictError);
  });

  it('sets, lists and deletes federated bundles, refusing to delete one in use', async () => {
    await t.store.setFederatedBundle(fed, '{"keys":[]}', 300);
    await t.store.setFederatedBundle(TrustDomain.parse('a.test'), '{"keys":[]}');
    expect((await t.store.listFederatedBundles()).map((b) => b.trustDomain.name)).toEqual(['a.test', 'partner.test']);
    expect((await t.store.getFederatedBundle(fed))?.refreshHint).toBe(300);
    const e = await t.store.createEntry({ spiffeId: id('/x'), parentId: agent(1), selectors: sel('unix:uid:1'), federatesWith: [fed] });
    await expect(t.store.deleteFederatedBundle(fed)).rejects.toBeInstanceOf(ConflictError);
    await t.store.deleteEntry(e.id);
    await t.store.deleteFederatedBundle(fed);
    expect(await t.store.getFederatedBundle(fed)).toBeUndefined();
    await expect(t.store.deleteFederatedBundle(fed)).rejects.toBeInstanceOf(NotFoundError);
  });

  it('stores one opaque CA journal per server', async () => {
    expect(await t.store.getCaJournal('server-a')).toBeUndefined();
    await t.store.putCaJournal('server-a', '{"x509":[1]}');
    await t.store.putCaJournal('server-b', '{"x509":[2]}');
    await t.store.putCaJournal('server-a', '{"x509":[3]}');
    expect(await t.store.getCaJournal('server-a')).toBe('{"x509":[3]}');
    expect(await t.store.getCaJournal('server-b')).toBe('{"x509":[2]}');
    await expect(t.store.putCaJournal('server-a', '{oops')).rejects.toBeInstanceOf(InvalidRecordError);
    expect(await t.store.getCaJournal('server-a')).toBe('{"x509":[3]}');
  });
});

describe('nonces', () => {
  const nonce = (i: number) => `nonce-${i.toString().padStart(16, '0')}`;

  it('is single-use, expires, tells unknown/used/expired apart, and prunes', async () => {
    const exp = new Date('2030-01-01T00:01:00Z');
    await t.store.issueNonce(nonce(1), exp, 'ek:abc');
    await t.store.issueNonce(nonce(2), exp, 'ek:def');
    await expect(t.store.issueNonce(nonce(1), exp, 'again')).rejects.toBeInstanceOf(ConflictError);
    expect(await t.store.consumeNonce(nonce(1), now)).toEqual({ kind: 'consumed', context: 'ek:abc' });
    expect(await t.store.consumeNonce(nonce(1), now)).toEqual({ kind: 'used', usedAt: now });
    expect(await t.store.consumeNonce(nonce(3), now)).toEqual({ kind: 'unknown' });
    expect(await t.store.consumeNonce(nonce(2), exp)).toEqual({ kind: 'expired', expiredAt: exp }); // expiry instant is already too late
    expect(await t.store.pruneNonces(new Date('2030-01-01T00:00:59Z'))).toBe(0);
    expect(await t.store.pruneNonces(exp)).toBe(2);
    expect(await t.store.consumeNonce(nonce(2), now)).toEqual({ kind: 'unknown' });
  });

  it('lets exactly one of several processes consume each nonce', async () => {
    const count = 200;
    const exp = new Date('2030-01-01T01:00:00Z');
    const all = Array.from({ length: count }, (_, i) => nonce(i));
    for (const n of all) await t.store.issueNonce(n, exp, 'ctx');
    const script = fileURLToPath(new URL('./nonce-consumer.ts', import.meta.url));
    const children = Array.from({ length: 3 }, () => fork(script, [], { execArgv: ['--import', 'tsx'], stdio: 'inherit' }));
    try {
      await Promise.all(children.map((c) => new Promise((r) => c.once('message', r))));
      // Every child gets the same nonces; half of them in reverse order, so they meet in the middle.
      const results = await Promise.all(
        children.map(
          (c, i) =>
            new Promise<string[]>((resolve, reject) => {
              c.once('message', (m: { results: string[] }) => resolve(i % 2 ? m.results.reverse() : m.results));
              c.once('exit', (code) => code !== 0 && reject(new Error(`child exited ${code}`)));
              c.send({ path: t.path, nonces: i % 2 ? [...all].reverse() : all, now: now.getTime() });
            }),
        ),
      );
      for (let k = 0; k < count; k++) {
        const kinds = results.map((r) => r[k]);
        expect(kinds.filter((x) => x === 'consumed')).toHaveLength(1);
        expect(kinds.filter((x) => x === 'used')).toHaveLength(children.length - 1);
      }
    } finally {
      for (const c of children) if (c.exitCode === null) c.kill();
    }
  });
});

describe('opening, migrating and reopening', () => {
  it('migrates an empty file, keeps data across reopen, and refuses a newer schema', async () => {
    const d = tempDir();
    try {
      const path = join(d.dir, 'empty.db');
      writeFileSync(path, '');
      let s = SqliteDatastore.open({ path });
      const raw = new Database(path, { readonly: true });
      expect(raw.prepare('SELECT max(version) v FROM schema_version').get()).toEqual({ v: LATEST_SCHEMA_VERSION });
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
      raw.close();
      const e = await s.createEntry({ spiffeId: id('/keep'), parentId: agent(1), selectors: sel('unix:uid:1') });
      await s.recordAttestation(attestation(1));
      await s.close();
      await expect(s.getEntry(e.id)).rejects.toBeInstanceOf(StoreError);

      s = SqliteDatastore.open({ path });
      expect((await s.getEntry(e.id))?.spiffeId.toString()).toBe('spiffe://example.org/keep');
      expect((await s.getNode(agent(1)))?.status.kind).toBe('active');
      const rev = await s.currentRevision();
      await s.close();

      const w = new Database(path);
      w.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(LATEST_SCHEMA_VERSION + 1, Date.now());
      w.close();
      const err = (() => {
        try {
          SqliteDatastore.open({ path });
        } catch (x) {
          return x;
        }
      })();
      expect(err).toBeInstanceOf(SchemaTooNewError);
      expect((err as SchemaTooNewError).found).toBe(LATEST_SCHEMA_VERSION + 1);
      // the refused open changed nothing
      const check = new Database(path, { readonly: true });
      expect(check.prepare('SELECT revision FROM store_revision').get()).toEqual({ revision: rev });
      check.close();
    } finally {
      d.remove();
    }
  });

  it('reports a file that is not a database as a StoreError', () => {
    const d = tempDir();
    try {
      const path = join(d.dir, 'junk.db');
      writeFileSync(path, 'this is not sqlite'.repeat(100));
      expect(() => SqliteDatastore.open({ path })).toThrow(StoreError);
    } finally {
      d.remove();
    }
  });
});
