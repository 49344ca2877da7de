/**
 * The authorized-entries index is kept up to date incrementally. These tests
 * check it against a plain reference (a fixpoint over listEntries) after
 * random sequences of writes, and against a fresh store object that builds
 * its index from scratch.
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  SqliteDatastore,
  type RegistrationEntry,
  type Selector,
} from '../../src/server/store/index.js';
import type { SpiffeId } from '../../src/spiffe/id.js';
import { agent, id, openTemp, sel, SERVER, type TempStore } from './helpers.js';

/** The rule, written the slow and obvious way. */
function reference(all: readonly RegistrationEntry[], agentId: SpiffeId, nodeSelectors: readonly Selector[]): string[] {
  const have = new Set(nodeSelectors.map((s) => `${s.type}:${s.value}`));
  const parents = new Set([agentId.toString()]);
  for (const e of all) {
    if (e.parentId.equals(SERVER) && e.selectors.every((s) => have.has(`${s.type}:${s.value}`))) parents.add(e.spiffeId.toString());
  }
  const out = new Set<string>();
  for (let changed = true; changed; ) {
    changed = false;
    for (const e of all) {
      if (!out.has(e.id) && parents.has(e.parentId.toString())) {
        out.add(e.id);
        parents.add(e.spiffeId.toString());
        changed = true;
      }
    }
  }
  return [...out].sort();
}

async function listAll(store: SqliteDatastore): Promise<RegistrationEntry[]> {
  const out: RegistrationEntry[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.listEntries({}, { limit: 1000, ...(cursor ? { cursor } : {}) });
    out.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

const paths = ['/a', '/b', '/c', '/d', '/e', '/f'];
const groupPaths = ['/g1', '/g2'];
const nodeSel = ['tpm:p:1', 'tpm:p:2', 'tpm:p:3'];

type Op =
  | { op: 'create'; spiffe: number; parent: number; sel: number }
  | { op: 'group'; group: number; sels: number[] }
  | { op: 'update'; pick: number; parent: number }
  | { op: 'delete'; pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('create' as const), spiffe: fc.nat(paths.length - 1), parent: fc.nat(paths.length + groupPaths.length + 1), sel: fc.nat(3) }),
  fc.record({ op: fc.constant('group' as const), group: fc.nat(groupPaths.length - 1), sels: fc.uniqueArray(fc.nat(nodeSel.length - 1), { minLength: 1, maxLength: 3 }) }),
  fc.record({ op: fc.constant('update' as const), pick: fc.nat(), parent: fc.nat(paths.length + groupPaths.length + 1) }),
  fc.record({ op: fc.constant('delete' as const), pick: fc.nat() }),
);

/** parent index → an ID: agent 1, agent 2, a group, or another entry's SPIFFE ID. */
const parentOf = (i: number) =>
  i === 0 ? agent(1) : i === 1 ? agent(2) : i < 2 + groupPaths.length ? id(groupPaths[i - 2]!) : id(paths[i - 2 - groupPaths.length]!);

let t: TempStore;
beforeAll(() => {
  t = openTemp();
});
afterAll(async () => {
  await t.cleanup();
});

describe('authorizedEntries index', () => {
  it('agrees with the reference and with a fresh build after random writes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 25 }), fc.subarray(nodeSel), async (ops, agentSel) => {
        const s = t.store;
        for (const e of await listAll(s)) await s.deleteEntry(e.id);
        for (const o of ops) {
          const existing = await listAll(s);
          if (o.op === 'create') {
            await s.createEntry({ spiffeId: id(paths[o.spiffe]!), parentId: parentOf(o.parent), selectors: sel(`unix:uid:${o.sel}`) }).catch(() => undefined);
          } else if (o.op === 'group') {
            await s.createEntry({ spiffeId: id(groupPaths[o.group]!), parentId: SERVER, selectors: sel(...o.sels.map((k) => nodeSel[k]!)) }).catch(() => undefined);
          } else if (existing.length) {
            const target = existing[o.pick % existing.length]!;
            if (o.op === 'delete') await s.deleteEntry(target.id);
            else if (!target.parentId.equals(SERVER)) await s.updateEntry(target.id, { parentId: parentOf(o.parent) }).catch(() => undefined);
          }
          // query after every write so the index is brought forward step by step
          await s.authorizedEntries(agent(1), sel(...agentSel));
        }
        const all = await listAll(s);
        const want = reference(all, agent(1), sel(...agentSel));
        const incremental = (await s.authorizedEntries(agent(1), sel(...agentSel))).entries.map((e) => e.id).sort();
        const fresh = SqliteDatastore.open({ path: t.path });
        try {
          const rebuilt = (await fresh.authorizedEntries(agent(1), sel(...agentSel))).entries.map((e) => e.id).sort();
          expect(incremental).toEqual(want);
          expect(rebuilt).toEqual(want);
        } finally {
          await fresh.close();
        }
      }),
      { numRuns: 40 },
    );
  });

  it('rebuilds from scratch when the tombstones it needed were pruned', async () => {
    const s = t.store;
    for (const e of await listAll(s)) await s.deleteEntry(e.id);
    const x = await s.createEntry({ spiffeId: id('/x'), parentId: agent(1), selectors: sel('unix:uid:1') });
    const y = await s.createEntry({ spiffeId: id('/y'), parentId: agent(1), selectors: sel('unix:uid:1') });
    expect((await s.authorizedEntries(agent(1), [])).entries).toHaveLength(2);

    // Another writer deletes x, then, two days later, y: x's tombstone is pruned.
    let now = new Date();
    const other = SqliteDatastore.open({ path: t.path, clock: () => now });
    try {
      await other.deleteEntry(x.id);
      now = new Date(now.getTime() + 2 * 24 * 3600 * 1000);
      await other.deleteEntry(y.id);
      await other.createEntry({ spiffeId: id('/z'), parentId: agent(1), selectors: sel('unix:uid:1') });
    } finally {
      await other.close();
    }
    expect((await s.authorizedEntries(agent(1), [])).entries.map((e) => e.spiffeId.path)).toEqual(['/z']);
  });
});
