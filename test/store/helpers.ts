import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { parseSelector, serverIdOf, SqliteDatastore, type EntryInput, type NodeAttestation, type Selector } from '../../src/server/store/index.js';

export const td = TrustDomain.parse('example.org');
export const id = (path: string) => td.child(path);
export const sel = (...texts: string[]): Selector[] => texts.map(parseSelector);
export const agent = (n: number) => td.child(`/keel/agent/tpm/${n.toString(16).padStart(64, '0')}`);
export const ekHash = (n: number) => n.toString(16).padStart(64, '0');
export const SERVER = serverIdOf(td);
export { SpiffeId, TrustDomain };

/** A workload entry under `parent` (default agent 1). */
export const workload = (path: string, parent = agent(1), selectors = sel('unix:uid:1000')): EntryInput => ({
  spiffeId: id(path),
  parentId: parent,
  selectors,
});

/** Node n's attestation: its EK hash, an AK name, policy and EK selectors, SVID `serial`. */
export const attestation = (n: number, serial = '01'): NodeAttestation => ({
  agentId: agent(n),
  ekPublicHash: ekHash(n),
  akName: '000b' + 'aa'.repeat(32),
  selectors: sel('tpm:policy:secure-boot', `tpm:ek-hash:${ekHash(n)}`),
  svid: { serial, notAfter: new Date('2030-01-02T00:00:00Z') },
  quote: { clock: 1000n, resetCount: 1, restartCount: 0 },
});

/** Polls `ok` every few ms; fails after `ms` naming what it waited for (`what` is read then, so it can show the state). */
export async function waitFor(what: string | (() => string), ok: () => boolean, ms: number, everyMs = 5): Promise<number> {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return Date.now() - t0;
}

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
