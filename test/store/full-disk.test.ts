/**
 * The SQLite store on a full disk (a small tmpfs filled to the last page):
 * writes are refused with StoreFullError and leave nothing behind, reads go
 * on, and writes succeed again by themselves once the space is back.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteDatastore, StoreError, StoreFullError } from '../../src/server/store/index.js';
import { agent, id, sel } from './helpers.js';
import { canMountTmpfs, mountSmallDisk, NOT_ROOT, type SmallDisk } from './tmpfs.js';

if (!canMountTmpfs) console.warn(`test/store/full-disk.test.ts ${NOT_ROOT}`);

describe.skipIf(!canMountTmpfs)('SQLite store on a full disk', () => {
  let disk: SmallDisk;
  let store: SqliteDatastore;

  beforeAll(async () => {
    disk = await mountSmallDisk();
    store = SqliteDatastore.open({ path: join(disk.dir, 'keel.db') });
  });
  afterAll(async () => {
    await store?.close();
    await disk?.unmount();
  });

  it('refuses writes with a typed StoreFullError, keeps reading, and writes again once space is back', async () => {
    const kept = await store.createEntry({ spiffeId: id('/kept'), parentId: agent(1), selectors: sel('unix:uid:1') });
    await store.putCaJournal('spiffe://example.org/keel/server', '{"v":1}');
    await disk.fill();

    // SQLite may still have a few free pages in its WAL: write until the disk says no.
    let refused: unknown;
    for (let i = 0; i < 500 && refused === undefined; i++) {
      await store.createEntry({ spiffeId: id(`/fill-${i}`), parentId: agent(1), selectors: sel(`unix:uid:${1000 + i}`) }).catch((e: unknown) => (refused = e));
    }
    expect(refused).toBeInstanceOf(StoreFullError);
    expect(refused).toBeInstanceOf(StoreError);
    expect((refused as StoreFullError).code).toBe('SQLITE_FULL');
    expect((refused as Error).message).toMatch(/disk .* is full/);

    const revision = await store.currentRevision();
    const journalWrite = await store.putCaJournal('spiffe://example.org/keel/server', '{"v":2}').catch((e: unknown) => e);
    expect(journalWrite).toBeInstanceOf(StoreFullError);
    const refusedEntry = await store.createEntry({ spiffeId: id('/refused'), parentId: agent(2), selectors: sel('unix:uid:2') }).catch((e: unknown) => e);
    expect(refusedEntry).toBeInstanceOf(StoreFullError);

    // Reads go on, and the refused writes left nothing behind.
    expect((await store.getEntry(kept.id))?.spiffeId.toString()).toBe('spiffe://example.org/kept');
    expect(await store.getCaJournal('spiffe://example.org/keel/server')).toBe('{"v":1}');
    expect(await store.currentRevision()).toBe(revision);
    expect((await store.listEntries({ parentId: agent(2) })).items).toHaveLength(0);

    await disk.free();
    await store.putCaJournal('spiffe://example.org/keel/server', '{"v":3}');
    expect(await store.getCaJournal('spiffe://example.org/keel/server')).toBe('{"v":3}');
    const after = await store.createEntry({ spiffeId: id('/refused'), parentId: agent(2), selectors: sel('unix:uid:2') });
    expect((await store.getEntry(after.id))?.spiffeId.toString()).toBe('spiffe://example.org/refused');
  });
});
