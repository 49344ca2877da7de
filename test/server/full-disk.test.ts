/**
 * A full disk under a running server (issue 15): the store on a small tmpfs
 * filled to the last page, the CA keys in a real SoftHSM token, the Node API
 * on a real TLS port, an agent calling it with its SVID. An issuance that
 * needs a journal write is refused with a typed error and an audit line,
 * nothing rejects unhandled, reads and write-free issuance go on, and service
 * resumes by itself once there is space again.
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCsr, credentialOf, NodeApiClient, NodeApiError, softwareAgentKey, type WireSyncEntries } from '../../src/agent/attestation/index.js';
import { Hsm } from '../../src/hsm/index.js';
import { memoryAuditLog } from '../../src/log/index.js';
import { loadPolicy } from '../../src/policy/index.js';
import { Attestor, firmwarePolicies } from '../../src/server/attestation/index.js';
import { CaJournalWriteError, CertificateAuthority, type CaJournal } from '../../src/server/ca/index.js';
import { NodeApiServer } from '../../src/server/node-api/index.js';
import { StoreCaJournal } from '../../src/server/server.js';
import { parseSelector, SqliteDatastore, StoreFullError } from '../../src/server/store/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { caTestToken, type CaTestToken } from '../ca/helpers.js';
import { canMountTmpfs, mountSmallDisk, NOT_ROOT, type SmallDisk } from '../store/tmpfs.js';

if (!canMountTmpfs) console.warn(`test/server/full-disk.test.ts ${NOT_ROOT}`);

const TD = TrustDomain.parse('example.org');
const EK = 'ab'.repeat(32);
const AGENT = `spiffe://example.org/keel/agent/tpm/${EK}`;
const POLICY = new URL('../../firmware-policies/swtpm-dev.yaml', import.meta.url).pathname;

describe.skipIf(!canMountTmpfs)('a server whose disk fills up', () => {
  let disk: SmallDisk;
  let t: CaTestToken;
  let hsm: Hsm;
  let store: SqliteDatastore;
  let ca: CertificateAuthority;
  let api: NodeApiServer;
  let client: NodeApiClient;
  let saves = 0;
  const audit = memoryAuditLog();
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown) => void unhandled.push(e);

  beforeAll(async () => {
    process.on('unhandledRejection', onUnhandled);
    disk = await mountSmallDisk();
    t = await caTestToken('keel-full-disk');
    hsm = await Hsm.open(t.config);
    store = SqliteDatastore.open({ path: join(disk.dir, 'keel.db') });
    const inner = new StoreCaJournal(store, 'spiffe://example.org/keel/server');
    const journal: CaJournal = { load: () => inner.load(), save: (s) => (saves++, inner.save(s)) };
    ca = await CertificateAuthority.open({
      trustDomain: TD,
      keys: hsm,
      journal,
      rotationCheckIntervalMs: 0,
      x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3600 },
      jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
    });
    const attestor = new Attestor({
      trustDomain: TD, store, ca,
      ekAdmission: { manufacturerCas: [], allowList: new Set([EK]) },
      policy: firmwarePolicies([loadPolicy(POLICY)]),
      pcrSelection: { bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] },
      nonceTtlSeconds: 60, agentSvidTtlSeconds: 3600, maxEventLogBytes: 1 << 20, audit,
    });
    api = await NodeApiServer.start({
      address: '127.0.0.1:0', attestor, ca, store, audit,
      serverSvidTtlSeconds: 3600, defaultX509SvidTtlSeconds: 600, defaultJwtSvidTtlSeconds: 300, maxEventLogBytes: 1 << 20, syncDebounceMs: 10,
    });
    // The agent as attestation would leave it: its SVID from the CA, its node record in the store.
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const svid = await ca.issueX509Svid({ csr: buildCsr(key), spiffeId: AGENT, ttlSeconds: 3600 });
    await store.recordAttestation({
      agentId: TD.child(`/keel/agent/tpm/${EK}`), ekPublicHash: EK, selectors: [],
      svid: { serial: svid.serial.toLowerCase(), notAfter: svid.notAfter }, quote: { clock: 1n, resetCount: 0, restartCount: 0 },
    });
    client = new NodeApiClient({
      address: `127.0.0.1:${api.port}`,
      serverCaBundle: ca.bundle().x509Authorities.map((c) => c.toString()).join(''),
      trustDomain: 'example.org',
      clientSvid: credentialOf([svid.certDer], softwareAgentKey(key)),
    });
  });
  afterAll(async () => {
    client?.close();
    await api?.close();
    await ca?.close();
    await store?.close();
    await hsm?.close();
    await t?.tok.destroy();
    await disk?.unmount();
    process.off('unhandledRejection', onUnhandled);
  });

  it('refuses JWT issuance with a typed error and an audit line, stays up, and resumes when space is back', async () => {
    const entry = await store.createEntry({ spiffeId: TD.child('/web'), parentId: TD.child(`/keel/agent/tpm/${EK}`), selectors: [parseSelector('unix:uid:1000')] });

    // No slack in SQLite's write-ahead log: the next write needs new space on a disk that has none.
    const db = new Database(join(disk.dir, 'keel.db'));
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    await disk.fill();

    // Nothing changed: rotation writes nothing, so a full disk does not even show.
    const savesBefore = saves;
    await ca.rotate();
    await ca.rotate();
    expect(saves).toBe(savesBefore);

    // The JWT key signed nothing yet: its first token needs a journal write, which the disk refuses.
    const refusedAt = audit.events.length;
    const err = await client.signJwtSvid(entry.id, ['https://api.example.org']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NodeApiError);
    expect((err as NodeApiError).reason).toBe('internal');
    expect(audit.events.slice(refusedAt)).toEqual([{ event: 'svid.refused', agentId: AGENT, entryId: entry.id, reason: 'internal' }]);
    const direct = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/web', audience: 'x', ttlSeconds: 60 }).catch((e: unknown) => e);
    expect(direct).toBeInstanceOf(CaJournalWriteError);
    expect((direct as CaJournalWriteError).cause).toBeInstanceOf(StoreFullError);
    expect((direct as Error).message).toMatch(/journal could not be saved.*disk holding the database is full/);

    // Reads go on: the sync stream delivers entries and bundle; an X.509-SVID within the durable bound needs no write.
    const update = await new Promise<WireSyncEntries>((resolve, reject) => {
      const cancel = client.syncEntries((u) => (cancel(), resolve(u)), reject);
    });
    expect(update.entries.map((e) => e.id)).toContain(entry.id);
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const x = await ca.issueX509Svid({ csr: buildCsr(leafKey), spiffeId: 'spiffe://example.org/web', ttlSeconds: 600 });
    expect(new X509Certificate(x.certDer).verify(ca.bundle().x509Authorities[0]!.publicKey)).toBe(true);
    expect(unhandled).toEqual([]);

    // Space is back: the next call writes the journal and gets its token, with no restart.
    await disk.free();
    const okAt = audit.events.length;
    const jwt = await client.signJwtSvid(entry.id, ['https://api.example.org']);
    expect(jwt.token.split('.')).toHaveLength(3);
    expect(audit.events.slice(okAt).map((e) => e.event)).toEqual(['svid.jwt_issued']);
    const journal = JSON.parse((await store.getCaJournal('spiffe://example.org/keel/server'))!);
    expect(journal.jwt[0].issuedUntilMs).toBeGreaterThanOrEqual(jwt.expiresAt.getTime());
    expect(unhandled).toEqual([]);
  });
});
