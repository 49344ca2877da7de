/**
 * `keel server migrate-store`: an SQLite store copied into an empty
 * PostgreSQL one reads back record for record (revisions, timestamps, node
 * states, tombstones, unused nonces), a server already running on the target
 * hears about it, and a second copy into a non-empty target is refused with
 * nothing written.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { SqliteDatastore, type Datastore, type StoreChange } from '../../src/server/store/index.js';
import { PostgresDatastore } from '../../src/server/store/postgres-datastore.js';
import { agent, ekHash, id, sel, SERVER, tempDir, TrustDomain, waitFor } from './helpers.js';
import { SKIP_PG, startPgCluster, SUPERUSER, type PgCluster } from './pg-cluster.js';

let c: PgCluster;
let dir: { dir: string; remove(): void };
beforeAll(async () => {
  if (SKIP_PG) return;
  c = await startPgCluster();
  dir = tempDir();
});
afterAll(async () => {
  await c?.stop();
  dir?.remove();
});

async function everything(s: Datastore) {
  const td = TrustDomain.parse('example.org');
  return {
    entries: (await s.listEntries({}, { limit: 1000 })).items,
    nodes: (await s.listNodes({}, { limit: 1000 })).items,
    own: await s.getOwnBundle(td),
    federated: await s.listFederatedBundles(),
    journal: await s.getCaJournal('spiffe://example.org/keel/server'),
    revision: await s.currentRevision(),
    authorized: (await s.authorizedEntries(agent(1), sel('tpm:policy:secure-boot'), new Date('2030-02-01T00:00:00Z'))).entries.map((e) => e.id).sort(),
  };
}

describe.skipIf(SKIP_PG)('keel server migrate-store', () => {
  it('copies every record of an SQLite store into an empty PostgreSQL store, and refuses a second copy', async () => {
    let now = new Date('2030-01-01T00:00:00Z');
    const path = join(dir.dir, 'keel.db');
    const src = SqliteDatastore.open({ path, clock: () => now });
    const partner = TrustDomain.parse('partner.test');
    await src.setFederatedBundle(partner, '{"keys":[]}', 600);
    await src.setOwnBundle(TrustDomain.parse('example.org'), '{"keys":[],"spiffe_sequence":3}', 3);
    await src.createEntry({ spiffeId: id('/group/sb'), parentId: SERVER, selectors: sel('tpm:policy:secure-boot') });
    await src.createEntry({
      spiffeId: id('/web'),
      parentId: id('/group/sb'),
      selectors: sel('unix:uid:1000', 'unix:gid:50'),
      dnsNames: ['web.example.org'],
      federatesWith: [partner],
      x509SvidTtl: 600,
      hint: 'front',
      expiresAt: new Date('2031-01-01T00:00:00Z'),
    });
    now = new Date('2030-01-01T00:10:00Z');
    const gone = await src.createEntry({ spiffeId: id('/gone'), parentId: agent(1), selectors: sel('unix:uid:1') });
    await src.deleteEntry(gone.id);
    for (const n of [1, 2, 3, 4]) {
      await src.recordAttestation({
        agentId: agent(n),
        ekPublicHash: ekHash(n),
        selectors: sel('tpm:policy:secure-boot'),
        svid: { serial: `0${n}`, notAfter: new Date('2030-01-02T00:00:00Z') },
        quote: { clock: 2n ** 63n + BigInt(n), resetCount: n, restartCount: 0 },
      });
    }
    await src.banNode(agent(2), 'stolen');
    await src.markNodeDrifted(agent(3), 'PCR 7');
    await src.evictNode(agent(4));
    await src.putCaJournal('spiffe://example.org/keel/server', '{"x509":[{"label":"keel-x509-ca-1"}]}');
    await src.issueNonce('nonce-unused-000000', new Date('2030-01-01T01:00:00Z'), 'ek:a');
    await src.issueNonce('nonce-used-00000000', new Date('2030-01-01T01:00:00Z'), 'ek:b');
    await src.consumeNonce('nonce-used-00000000', now);
    const before = await everything(src);
    await src.close();

    const db = await c.createDatabase();
    const cfg = join(dir.dir, 'server.yaml');
    writeFileSync(
      cfg,
      `server:
  trust_domain: example.org
  data_dir: ${dir.dir}
  listen: { node_api: 127.0.0.1:8081, http: 127.0.0.1:8443, admin_socket: ${dir.dir}/admin.sock, http_plaintext: true }
  store:
    postgres: { socket_dir: ${c.socketDir}, port: ${c.port}, database: ${db}, user: ${SUPERUSER} }
  hsm: { module: /usr/lib/softhsm/libsofthsm2.so, token_label: keel, pin_source: env:KEEL_HSM_PIN }
  ca: { ttl: 7d }
  attestation: { manufacturer_cas: [ca.pem], firmware_policies: [policy.yaml] }
`,
    );

    // A server already running on the (empty, migrated) target.
    const running = await PostgresDatastore.open(c.socketOptions(db));
    const heard: StoreChange[] = [];
    running.subscribe((ch) => heard.push(ch));
    const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    const err = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      const code = await main(['server', 'migrate-store', '--from', path, '--to', cfg]);
      expect(err.mock.calls.map((x) => String(x[0]))).toEqual([]);
      expect(code).toBe(0);
      expect(String(log.mock.calls[0]?.[0])).toMatch(/^copied .* at revision \d+: entries 2, .*nodes 4, .*nonces 2/);

      await waitFor(
        () => `the running server to hear of the copy (heard ${JSON.stringify(heard)})`,
        () => heard.some((h) => h.kind === 'entries' && h.revision === before.revision),
        1000,
        10,
      );
      expect(await everything(running)).toEqual(before);
      expect(await running.consumeNonce('nonce-unused-000000', now)).toEqual({ kind: 'consumed', context: 'ek:a' });
      expect((await running.consumeNonce('nonce-used-00000000', now)).kind).toBe('used');
      const next = await running.createEntry({ spiffeId: id('/after'), parentId: agent(1), selectors: sel('unix:uid:2') });
      expect(next.revision).toBe(before.revision + 1);

      // Not empty any more: refused, and nothing changed.
      const snapshot = await everything(running);
      expect(await main(['server', 'migrate-store', '--from', path, '--to', cfg])).toBe(1);
      expect(String(err.mock.calls.at(-1)?.[0])).toMatch(/target database is not empty/);
      expect(await everything(running)).toEqual(snapshot);

      expect(await main(['server', 'migrate-store', '--from', path])).toBe(2);
    } finally {
      log.mockRestore();
      err.mockRestore();
      await running.close();
    }
  });
});
