// Nodes that leave their firmware policy between renewals: 'drifted', with
// the reason, no SVID, and free to attest again; and the migration that
// brought the status in keeps every node and its selectors.
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConflictError, InvalidRecordError, NodeNotActiveError } from '../../src/server/store/index.js';
import { MIGRATIONS, migrate } from '../../src/server/store/migrations.js';
import { agent, attestation, ekHash, openTemp, tempDir, type TempStore } from './helpers.js';

let t: TempStore;
const now = new Date('2030-01-01T00:00:00Z');
beforeEach(() => {
  t = openTemp(() => now);
});
afterEach(async () => {
  await t.cleanup();
});

describe('drifted nodes', () => {
  it('an active node drifts with its reason, loses its SVID, cannot renew, and attests again', async () => {
    await t.store.recordAttestation(attestation(1));
    const d = await t.store.markNodeDrifted(agent(1), 'PCR 7 is not in policy secure-boot', { ifSvidSerial: '01' });
    expect(d.status).toEqual({ kind: 'drifted', since: now, reason: 'PCR 7 is not in policy secure-boot' });
    expect((await t.store.listNodes({ status: 'drifted' })).items.map((n) => n.agentId.toString())).toEqual([agent(1).toString()]);
    await expect(
      t.store.renewNode(agent(1), { svid: { serial: '02', notAfter: now }, quote: d.lastQuote, selectors: [] }),
    ).rejects.toSatisfy((e) => e instanceof NodeNotActiveError && e.status === 'drifted');
    await expect(t.store.markNodeDrifted(agent(1), 'again')).rejects.toBeInstanceOf(NodeNotActiveError);
    const back = await t.store.recordAttestation(attestation(1, '03'));
    expect(back.status.kind === 'active' && back.status.svid.serial).toBe('03');
  });

  it('refuses a drift for an SVID the node no longer holds, and an empty reason', async () => {
    await t.store.recordAttestation(attestation(2, '05'));
    await expect(t.store.markNodeDrifted(agent(2), 'x', { ifSvidSerial: '04' })).rejects.toBeInstanceOf(ConflictError);
    await expect(t.store.markNodeDrifted(agent(2), ' ')).rejects.toBeInstanceOf(InvalidRecordError);
    expect((await t.store.getNode(agent(2)))!.status.kind).toBe('active');
  });

  it('the v1 → v2 migration keeps nodes, their selectors and the foreign key', () => {
    const { dir, remove } = tempDir();
    try {
      const db = new Database(join(dir, 'v1.db'));
      db.pragma('foreign_keys = ON');
      expect(migrate(db, MIGRATIONS.slice(0, 1))).toBe(1);
      const id = agent(3).toString();
      db.prepare(
        `INSERT INTO nodes VALUES (?, ?, NULL, 'tpm', '[]', 'banned', 1, 'stolen', NULL, NULL, '10', 1, 0, 1, 1, 1)`,
      ).run(id, ekHash(3));
      db.prepare('INSERT INTO node_selectors VALUES (?, ?), (?, ?)').run(id, 'tpm:a', id, 'tpm:b');
      expect(migrate(db)).toBe(MIGRATIONS[MIGRATIONS.length - 1]!.version);
      expect(db.prepare('SELECT count(*) AS n FROM node_selectors').get()).toEqual({ n: 2 });
      expect(db.prepare('SELECT status, banned_reason FROM nodes').get()).toEqual({ status: 'banned', banned_reason: 'stolen' });
      expect(db.pragma('foreign_keys', { simple: true })).toBe(1);
      expect(db.pragma('foreign_key_check')).toEqual([]);
      // The rebuilt table still cascades to its selectors.
      db.prepare('DELETE FROM nodes').run();
      expect(db.prepare('SELECT count(*) AS n FROM node_selectors').get()).toEqual({ n: 0 });
      db.close();
    } finally {
      remove();
    }
  });
});
