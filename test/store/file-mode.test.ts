/**
 * The SQLite store holds every entry, node and CA journal: keel.db and its
 * -wal and -shm files are 0600 whatever the umask (issue 12).
 */
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SqliteDatastore } from '../../src/server/store/index.js';

const modeOf = (p: string): number => statSync(p).mode & 0o777;

let dir: string;
let umask: number;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keel-store-mode-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
// With umask 0, a file created without an explicit mode would come out 0644 (SQLite's default) or wider.
beforeEach(() => {
  umask = process.umask(0);
});
afterEach(() => {
  process.umask(umask);
});

describe('SQLite store file mode', () => {
  it('creates keel.db, keel.db-wal and keel.db-shm with mode 0600', async () => {
    const path = join(dir, 'new.db');
    const store = SqliteDatastore.open({ path });
    try {
      // A write, so that the WAL certainly has content.
      await store.putCaJournal('spiffe://example.org/keel/server', '{}');
      expect(modeOf(path)).toBe(0o600);
      expect(existsSync(`${path}-wal`)).toBe(true);
      expect(modeOf(`${path}-wal`)).toBe(0o600);
      expect(modeOf(`${path}-shm`)).toBe(0o600);
    } finally {
      await store.close();
    }
  });

  it('tightens an existing 0644 keel.db of ours to 0600', async () => {
    const path = join(dir, 'old.db');
    writeFileSync(path, '');
    chmodSync(path, 0o644);
    const store = SqliteDatastore.open({ path });
    try {
      expect(modeOf(path)).toBe(0o600);
      expect(modeOf(`${path}-wal`)).toBe(0o600);
    } finally {
      await store.close();
    }
  });
});
