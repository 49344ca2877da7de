import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { parseSelector, serverIdOf, SqliteDatastore, type Selector } from '../../src/server/store/index.js';

export const td = TrustDomain.parse('example.org');
export const id = (path: string) => td.child(path);
export const sel = (...texts: string[]): Selector[] => texts.map(parseSelector);
export const agent = (n: number) => td.child(`/keel/agent/tpm/${n.toString(16).padStart(64, '0')}`);
export const ekHash = (n: number) => n.toString(16).padStart(64, '0');
export const SERVER = serverIdOf(td);
export { SpiffeId, TrustDomain };

export interface TempStore {
  dir: string;
  path: string;
  store: SqliteDatastore;
  cleanup(): Promise<void>;
}

export function tempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'keel-store-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export function openTemp(clock?: () => Date): TempStore {
  const { dir, remove } = tempDir();
  const path = join(dir, 'keel.db');
  const store = SqliteDatastore.open({ path, ...(clock ? { clock } : {}) });
  return {
    dir,
    path,
    store,
    async cleanup() {
      await store.close();
      remove();
    },
  };
}
