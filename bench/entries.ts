/**
 * authorizedEntries for one agent in a store of 10,000 registration entries
 * (direct, node-group and descendant entries), on a SQLite file in a temp dir.
 * Reported: index current; right after an entry write (the index is brought
 * forward with the changed rows); first call after opening (full build); and,
 * as the limit measured in the same run, the cost of merely reading all
 * 10,000 rows with better-sqlite3.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import { TrustDomain } from '../src/spiffe/id.js';
import { parseSelector, serverIdOf, SqliteDatastore, type EntryInput } from '../src/server/store/index.js';

const TOTAL = 10_000;
const AGENTS = 200;
const DIRECT_PER_AGENT = 20; // 4,000
const GROUPS = 50;
const PER_GROUP = 60; // 3,000
const TARGET_MS = 50;

const td = TrustDomain.parse('bench.example');
const server = serverIdOf(td);
const agent = (n: number) => td.child(`/keel/agent/tpm/${n.toString(16).padStart(64, '0')}`);
const uid = (n: number) => [parseSelector(`unix:uid:${n}`)];

function dataset(): EntryInput[] {
  const out: EntryInput[] = [];
  for (let a = 0; a < AGENTS; a++) {
    for (let i = 0; i < DIRECT_PER_AGENT; i++) out.push({ spiffeId: td.child(`/a${a}/w${i}`), parentId: agent(a), selectors: uid(i) });
  }
  for (let g = 0; g < GROUPS; g++) {
    // 10 policies × 5 racks; groups 0-4 need two selectors
    const selectors = [parseSelector(`tpm:policy:p${g % 10}`)];
    if (g < 5) selectors.push(parseSelector(`tpm:rack:${g}`));
    out.push({ spiffeId: td.child(`/group/${g}`), parentId: server, selectors });
    for (let i = 0; i < PER_GROUP; i++) out.push({ spiffeId: td.child(`/g${g}/w${i}`), parentId: td.child(`/group/${g}`), selectors: uid(i) });
  }
  // descendants, two levels, under direct and group entries, until 10,000
  let k = 0;
  while (out.length < TOTAL) {
    const base = k % 2 ? td.child(`/a${k % AGENTS}/w${k % DIRECT_PER_AGENT}`) : td.child(`/g${k % GROUPS}/w${k % PER_GROUP}`);
    const child = td.child(`${base.path}/d${k}`);
    out.push({ spiffeId: child, parentId: base, selectors: uid(10_000 + k) });
    if (out.length < TOTAL) out.push({ spiffeId: td.child(`${child.path}/e`), parentId: child, selectors: uid(20_000 + k) });
    k++;
  }
  return out;
}

function stats(samples: number[]): { p50: number; p99: number } {
  const s = [...samples].sort((x, y) => x - y);
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  return { p50: at(0.5), p99: at(0.99) };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'keel-bench-entries-'));
  const path = join(dir, 'keel.db');
  try {
    const store = SqliteDatastore.open({ path });
    const all = dataset();
    for (let i = 0; i < all.length; i += 1000) {
      const r = await store.createEntries(all.slice(i, i + 1000));
      if (!r.committed) throw new Error('bench dataset did not load');
    }
    const me = agent(7);
    const mySelectors = [parseSelector('tpm:policy:p3'), parseSelector('tpm:rack:3'), parseSelector('tpm:ek-hash:07')];
    const first = await store.authorizedEntries(me, mySelectors);
    const n = first.entries.length;

    const warm: number[] = [];
    for (let i = 0; i < 500; i++) {
      const t0 = performance.now();
      await store.authorizedEntries(me, mySelectors);
      warm.push(performance.now() - t0);
    }
    // After one entry write: the index is brought forward with the changed rows.
    const target = (await store.listEntries({ parentId: me }, { limit: 1 })).items[0]!.id;
    const afterWrite: number[] = [];
    for (let i = 0; i < 200; i++) {
      await store.updateEntry(target, { hint: `h${i}` });
      const t0 = performance.now();
      await store.authorizedEntries(me, mySelectors);
      afterWrite.push(performance.now() - t0);
    }
    await store.close();

    // First call of a freshly opened store: the index is built from all rows.
    const cold: number[] = [];
    for (let i = 0; i < 20; i++) {
      const s = SqliteDatastore.open({ path });
      const t0 = performance.now();
      await s.authorizedEntries(me, mySelectors);
      cold.push(performance.now() - t0);
      await s.close();
    }

    // The limit: just reading every entry row, no decoding, no matching.
    const raw = new Database(path, { readonly: true });
    const readAll = raw.prepare('SELECT * FROM entries');
    const scan: number[] = [];
    for (let i = 0; i < 40; i++) {
      const t0 = performance.now();
      readAll.all();
      scan.push(performance.now() - t0);
    }
    raw.close();

    const w = stats(warm);
    const a = stats(afterWrite);
    const c = stats(cold);
    const r = stats(scan);
    const f = (x: number) => x.toFixed(3);
    console.log(`${TOTAL} entries (${AGENTS * DIRECT_PER_AGENT} direct, ${GROUPS} node groups with ${GROUPS * PER_GROUP} entries, rest descendants); the agent is authorized for ${n}.\n`);
    console.log('| case | samples | p50 ms | p99 ms | p50 / read-all-rows | p99 / 50 ms target |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    console.log(`| authorizedEntries, index current | ${warm.length} | ${f(w.p50)} | ${f(w.p99)} | ${(w.p50 / r.p50).toFixed(3)} | ${(w.p99 / TARGET_MS).toFixed(3)} |`);
    console.log(`| authorizedEntries, after an entry write (incremental) | ${afterWrite.length} | ${f(a.p50)} | ${f(a.p99)} | ${(a.p50 / r.p50).toFixed(3)} | ${(a.p99 / TARGET_MS).toFixed(3)} |`);
    console.log(`| authorizedEntries, first call after open (full build) | ${cold.length} | ${f(c.p50)} | ${f(c.p99)} | ${(c.p50 / r.p50).toFixed(2)} | ${(c.p99 / TARGET_MS).toFixed(3)} |`);
    console.log(`| limit: SELECT * FROM entries (better-sqlite3) | ${scan.length} | ${f(r.p50)} | ${f(r.p99)} | 1 | ${(r.p99 / TARGET_MS).toFixed(3)} |`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
