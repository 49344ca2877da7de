/**
 * One suite for every Datastore backend: the same calls, the same answers,
 * the same typed errors, on SQLite (a temp file) and on PostgreSQL (a private
 * cluster, see pg-cluster.ts). Each test gets a fresh, empty database; "two
 * store objects" means two independent opens of that database (two SQLite
 * connections, or two PostgreSQL pools), racing for real on PostgreSQL.
 *
 * PostgreSQL is part of the set-up (scripts/setup.sh): when it is missing the
 * PostgreSQL half fails rather than skipping, unless KEEL_SKIP_PG=1.
 */
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  ConflictError,
  InvalidRecordError,
  NodeBannedError,
  NodeNotActiveError,
  NotFoundError,
  SqliteDatastore,
  StoreError,
  type Datastore,
  type EntryInput,
  type NodeAttestation,
  type RegistrationEntry,
  type StoreChange,
} from '../../src/server/store/index.js';
import { PostgresDatastore } from '../../src/server/store/postgres-datastore.js';
import { agent, attestation, ekHash, id, sel, SERVER, tempDir, TrustDomain, waitFor, workload } from './helpers.js';
import { SKIP_PG, startPgCluster, type PgCluster } from './pg-cluster.js';

interface Database {
  open(clock?: () => Date): Promise<Datastore>;
}

interface Backend {
  readonly name: string;
  /** Whether a change written through one store object reaches another's subscribers (SQLite: per object, see types.ts). */
  readonly crossInstanceFeed: boolean;
  setup(): Promise<void>;
  teardown(): Promise<void>;
  fresh(): Promise<Database>;
}

const sqliteDirs: { remove(): void }[] = [];
const sqlite: Backend = {
  name: 'sqlite',
  crossInstanceFeed: false,
  async setup() {},
  async teardown() {
    for (const d of sqliteDirs.splice(0)) d.remove();
  },
  async fresh() {
    const d = tempDir();
    sqliteDirs.push(d);
    const path = join(d.dir, 'keel.db');
    return { open: async (clock) => SqliteDatastore.open({ path, ...(clock ? { clock } : {}) }) };
  },
};

let cluster: PgCluster | undefined;
const postgres: Backend = {
  name: 'postgres',
  crossInstanceFeed: true,
  async setup() {
    cluster = await startPgCluster();
  },
  async teardown() {
    await cluster?.stop();
  },
  async fresh() {
    const db = await cluster!.createDatabase();
    return { open: (clock) => PostgresDatastore.open({ ...cluster!.socketOptions(db), ...(clock ? { clock } : {}) }) };
  },
};

const backends = SKIP_PG ? [sqlite] : [sqlite, postgres];

const nextTick = () => new Promise((r) => setTimeout(r, 0));

const ids = (es: readonly RegistrationEntry[]) => es.map((e) => e.id).sort();
const nonce = (i: number) => `nonce-${i.toString().padStart(16, '0')}`;

describe.each(backends)('Datastore conformance: $name', (backend) => {
  let database: Database;
  let s: Datastore;
  let now: Date;
  const opened: Datastore[] = [];
  /** Another store object on the same database. */
  const another = async (): Promise<Datastore> => {
    const o = await database.open(() => now);
    opened.push(o);
    return o;
  };

  beforeAll(() => backend.setup());
  afterAll(() => backend.teardown());
  beforeEach(async () => {
    now = new Date('2030-01-01T00:00:00Z');
    database = await backend.fresh();
    s = await another();
  });
  afterEach(async () => {
    for (const o of opened.splice(0)) await o.close().catch(() => undefined);
  });

  describe('registration entries', () => {
    it('creates, reads, updates and deletes an entry with every field', async () => {
      const fed = TrustDomain.parse('partner.test');
      await s.setFederatedBundle(fed, '{"keys":[]}');
      const created = await s.createEntry({
        spiffeId: id('/web'),
        parentId: agent(1),
        selectors: sel('unix:uid:1000', 'unix:gid:50', 'unix:uid:1000'),
        x509SvidTtl: 3600,
        jwtSvidTtl: 300,
        dnsNames: ['web.example.org', '*.web.example.org'],
        federatesWith: [fed],
        admin: true,
        downstream: false,
        hint: 'frontend',
        expiresAt: new Date('2030-06-01T00:00:00Z'),
      });
      expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
      expect(created.selectors.map((x) => `${x.type}:${x.value}`)).toEqual(['unix:gid:50', 'unix:uid:1000']);
      expect(created.federatesWith.map((d) => d.name)).toEqual(['partner.test']);
      expect(created.revision).toBe(await s.currentRevision());
      expect(created.createdAt).toEqual(now);

      const read = await s.getEntry(created.id);
      expect(read).toEqual(created);
      expect(read?.dnsNames).toEqual(['web.example.org', '*.web.example.org']);
      expect(read?.expiresAt?.toISOString()).toBe('2030-06-01T00:00:00.000Z');

      now = new Date('2030-01-01T00:00:05Z');
      const updated = await s.updateEntry(created.id, { hint: null, x509SvidTtl: null, selectors: sel('unix:uid:2000') });
      expect(updated.hint).toBeUndefined();
      expect(updated.x509SvidTtl).toBeUndefined();
      expect(updated.jwtSvidTtl).toBe(300);
      expect(updated.admin).toBe(true);
      expect(updated.revision).toBeGreaterThan(created.revision);
      expect(updated.createdAt).toEqual(created.createdAt);
      expect(updated.updatedAt).toEqual(now);
      expect((await s.listEntries({ selectors: { match: 'exact', selectors: sel('unix:uid:2000') } })).items.map((e) => e.id)).toEqual([created.id]);

      const deleted = await s.deleteEntry(created.id);
      expect(deleted.id).toBe(created.id);
      expect(await s.getEntry(created.id)).toBeUndefined();
      await expect(s.deleteEntry(created.id)).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.updateEntry(created.id, { admin: true })).rejects.toBeInstanceOf(NotFoundError);
      expect(await s.getEntry('not-an-id')).toBeUndefined();
    });

    it('keeps a caller-chosen id, and refuses it twice', async () => {
      const chosen = '0123abcd-0000-4000-8000-00000000000a';
      expect((await s.createEntry({ ...workload('/imported'), id: chosen })).id).toBe(chosen);
      const err = await s.createEntry({ ...workload('/other'), id: chosen }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).existingId).toBe(chosen);
    });

    it('refuses a second entry with the same SPIFFE ID, parent and selector set, naming the existing one', async () => {
      const first = await s.createEntry(workload('/db', agent(1), sel('unix:uid:1', 'unix:gid:2')));
      const err = await s.createEntry(workload('/db', agent(1), sel('unix:gid:2', 'unix:uid:1'))).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConflictError);
      expect((err as ConflictError).existingId).toBe(first.id);
      expect((err as Error).message).toContain('spiffe://example.org/db');
      await s.createEntry(workload('/db', agent(1), sel('unix:uid:1')));
      await s.createEntry(workload('/db', agent(2), sel('unix:uid:1', 'unix:gid:2')));
      const other = await s.createEntry(workload('/db', agent(3)));
      await expect(s.updateEntry(other.id, { parentId: agent(1), selectors: sel('unix:uid:1') })).rejects.toBeInstanceOf(ConflictError);
      expect((await s.getEntry(other.id))?.parentId.equals(agent(3))).toBe(true);
    });

    it('accepts a selector set far larger than an index entry', async () => {
      const big = Array.from({ length: 40 }, (_, i) => `unix:path:/opt/${'x'.repeat(200)}/${i}`);
      const e = await s.createEntry(workload('/big', agent(1), sel(...big)));
      expect((await s.getEntry(e.id))?.selectors).toHaveLength(40);
      await expect(s.createEntry(workload('/big', agent(1), sel(...big.reverse())))).rejects.toBeInstanceOf(ConflictError);
    });

    it('rejects bad entries with the field named, and writes nothing', async () => {
      const bad = async (input: EntryInput, field: string) => {
        const e = await s.createEntry(input).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(InvalidRecordError);
        expect((e as InvalidRecordError).field).toBe(field);
      };
      const before = await s.currentRevision();
      await bad({ ...workload('/a'), selectors: [] }, 'selectors');
      await bad({ ...workload('/a'), selectors: [{ type: 'Unix', value: 'x' }] }, 'selectors');
      await bad({ ...workload('/a'), selectors: [{ type: 'unix', value: 'a\u0000b' }] }, 'selectors');
      await bad({ ...workload('/a'), x509SvidTtl: 0 }, 'x509SvidTtl');
      await bad({ ...workload('/a'), jwtSvidTtl: 1.5 }, 'jwtSvidTtl');
      await bad({ ...workload('/a'), dnsNames: ['Bad_Name'] }, 'dnsNames');
      await bad({ ...workload('/a'), federatesWith: [TrustDomain.parse('example.org')] }, 'federatesWith');
      await bad({ ...workload('/a'), parentId: TrustDomain.parse('other.org').child('/agent') }, 'parentId');
      await bad({ ...workload('/a'), id: 'not-a-uuid' }, 'id');
      await bad({ ...workload('/a'), spiffeId: TrustDomain.parse('example.org').id() }, 'spiffeId');
      await bad({ ...workload('/a'), hint: 'nul \u0000 inside' }, 'hint');
      await bad({ ...workload('/a'), expiresAt: new Date(Number.NaN) }, 'expiresAt');
      const e = await s.createEntry(workload('/ok'));
      await expect(s.updateEntry(e.id, { x509SvidTtl: -1 })).rejects.toBeInstanceOf(InvalidRecordError);
      expect((await s.getEntry(e.id))?.revision).toBe(e.revision);
      expect((await s.listEntries()).items.map((x) => x.id)).toEqual([e.id]);
      expect(await s.currentRevision()).toBe(before + 1);
    });

    it('updates with ifRevision only while the entry is unchanged, and exactly one of two racing writers wins', async () => {
      const e = await s.createEntry(workload('/cas'));
      const u = await s.updateEntry(e.id, { hint: 'one' }, { ifRevision: e.revision });
      const stale = await s.updateEntry(e.id, { hint: 'two' }, { ifRevision: e.revision }).catch((x: unknown) => x);
      expect(stale).toBeInstanceOf(ConflictError);
      expect((stale as ConflictError).existingId).toBe(e.id);
      expect((await s.getEntry(e.id))?.hint).toBe('one');

      const b = await another();
      for (let round = 0; round < 10; round++) {
        const cur = (await s.getEntry(e.id))!;
        const outcomes = await Promise.allSettled([
          s.updateEntry(e.id, { hint: `a${round}` }, { ifRevision: cur.revision }),
          b.updateEntry(e.id, { hint: `b${round}` }, { ifRevision: cur.revision }),
        ]);
        const won = outcomes.filter((o) => o.status === 'fulfilled');
        expect(won).toHaveLength(1);
        const lost = outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult;
        expect(lost.reason).toBeInstanceOf(ConflictError);
        expect((await s.getEntry(e.id))?.hint).toBe((won[0] as PromiseFulfilledResult<RegistrationEntry>).value.hint);
      }
      expect(u.revision).toBeGreaterThan(e.revision);
    });
  });

  describe('listing entries', () => {
    let a: RegistrationEntry, b: RegistrationEntry, c: RegistrationEntry, d: RegistrationEntry;
    beforeEach(async () => {
      const p1 = TrustDomain.parse('p1.test');
      const p2 = TrustDomain.parse('p2.test');
      a = await s.createEntry({ ...workload('/a', agent(1), sel('unix:uid:1')), federatesWith: [p1] });
      b = await s.createEntry({ ...workload('/b', agent(1), sel('unix:uid:1', 'unix:gid:1')), federatesWith: [p1, p2] });
      c = await s.createEntry({ ...workload('/c', agent(2), sel('unix:uid:1', 'unix:gid:1', 'unix:user:x')), hint: 'h', downstream: true });
      d = await s.createEntry(workload('/a', agent(2), sel('unix:gid:1')));
    });

    it('filters by parent, SPIFFE ID, hint and downstream', async () => {
      expect(ids((await s.listEntries({ parentId: agent(1) })).items)).toEqual(ids([a, b]));
      expect(ids((await s.listEntries({ spiffeId: id('/a') })).items)).toEqual(ids([a, d]));
      expect(ids((await s.listEntries({ spiffeId: id('/a'), parentId: agent(2) })).items)).toEqual(ids([d]));
      expect(ids((await s.listEntries({ hint: 'h' })).items)).toEqual(ids([c]));
      expect(ids((await s.listEntries({ downstream: true })).items)).toEqual(ids([c]));
      expect(ids((await s.listEntries({ downstream: false })).items)).toEqual(ids([a, b, d]));
    });

    it('matches selector sets exactly, as subset, superset and any, empty sets included', async () => {
      const q = (match: 'exact' | 'subset' | 'superset' | 'any', ...x: string[]) =>
        s.listEntries({ selectors: { match, selectors: sel(...x) } }).then((p) => ids(p.items));
      expect(await q('exact', 'unix:gid:1', 'unix:uid:1')).toEqual(ids([b]));
      expect(await q('subset', 'unix:uid:1', 'unix:gid:1')).toEqual(ids([a, b, d]));
      expect(await q('superset', 'unix:uid:1', 'unix:gid:1')).toEqual(ids([b, c]));
      expect(await q('any', 'unix:user:x', 'unix:gid:1')).toEqual(ids([b, c, d]));
      expect(await q('any', 'unix:uid:404')).toEqual([]);
      expect(await q('any')).toEqual([]);
      expect(await q('subset')).toEqual([]);
      expect(await q('superset')).toEqual(ids([a, b, c, d]));
      expect(await q('exact')).toEqual([]);
    });

    it('filters by federated trust domains', async () => {
      const q = (match: 'exact' | 'subset' | 'superset' | 'any', ...names: string[]) =>
        s.listEntries({ federatesWith: { match, trustDomains: names.map((n) => TrustDomain.parse(n)) } }).then((p) => ids(p.items));
      expect(await q('any', 'p2.test')).toEqual(ids([b]));
      expect(await q('superset', 'p1.test')).toEqual(ids([a, b]));
      expect(await q('exact', 'p1.test')).toEqual(ids([a]));
      expect(await q('exact')).toEqual(ids([c, d]));
      expect(await q('subset', 'p1.test')).toEqual(ids([a, c, d]));
    });

    it('pages with a cursor through every entry exactly once, in id order', async () => {
      for (let i = 0; i < 23; i++) await s.createEntry(workload(`/many/${i}`, agent(9)));
      const seen: string[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await s.listEntries({}, { limit: 5, ...(cursor ? { cursor } : {}) });
        seen.push(...page.items.map((e) => e.id));
        cursor = page.nextCursor;
        pages++;
      } while (cursor);
      expect(pages).toBe(6);
      expect(seen).toHaveLength(27);
      expect(new Set(seen).size).toBe(27);
      expect([...seen].sort()).toEqual(seen);
      await expect(s.listEntries({}, { cursor: '!!' })).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.listEntries({}, { limit: 0 })).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.listEntries({}, { limit: 1001 })).rejects.toBeInstanceOf(InvalidRecordError);
    });
  });

  describe('batches', () => {
    it('writes nothing when one item is bad, and says which', async () => {
      const before = await s.currentRevision();
      const seen: StoreChange[] = [];
      s.subscribe((c) => seen.push(c));
      const r = await s.createEntries([workload('/x'), workload('/y'), { ...workload('/z'), selectors: [] }, workload('/x')]);
      expect(r.committed).toBe(false);
      expect(r.results.map((x) => x.status)).toEqual(['rolled-back', 'rolled-back', 'failed', 'failed']);
      const [, , third, fourth] = r.results;
      expect(third?.status === 'failed' && third.error).toBeInstanceOf(InvalidRecordError);
      expect(fourth?.status === 'failed' && fourth.error).toBeInstanceOf(ConflictError);
      expect((await s.listEntries()).items).toHaveLength(0);
      expect(await s.currentRevision()).toBe(before);
      await nextTick();
      expect(seen).toEqual([]);
    });

    it('writes every item of a good batch in one revision, and deletes all or nothing', async () => {
      const r = await s.createEntries([workload('/x'), workload('/y'), workload('/z')]);
      expect(r.committed).toBe(true);
      const values = r.results.map((x) => (x.status === 'done' ? x.value : undefined));
      expect(values.every((v) => v !== undefined)).toBe(true);
      expect(new Set(values.map((v) => v!.revision)).size).toBe(1);
      expect(values[0]!.revision).toBe(await s.currentRevision());
      expect((await s.listEntries()).items).toHaveLength(3);

      const del = await s.deleteEntries([values[0]!.id, '00000000-0000-0000-0000-000000000000']);
      expect(del.committed).toBe(false);
      expect(del.results.map((x) => x.status)).toEqual(['rolled-back', 'failed']);
      const failed = del.results[1];
      expect(failed?.status === 'failed' && failed.error).toBeInstanceOf(NotFoundError);
      expect((await s.listEntries()).items).toHaveLength(3);
      const ok = await s.deleteEntries([values[0]!.id, values[1]!.id]);
      expect(ok.committed).toBe(true);
      expect((await s.listEntries()).items.map((e) => e.id)).toEqual([values[2]!.id]);
      expect(await s.createEntries([])).toEqual({ committed: true, results: [] });
    });
  });

  describe('authorizedEntries', () => {
    it('gives an agent its own entries, its node groups\u2019 entries and their descendants, and nothing else', async () => {
      const mine = await s.createEntry(workload('/direct', agent(1)));
      const notMine = await s.createEntry(workload('/other-agent', agent(2)));
      await s.createEntry({ spiffeId: id('/group/secure-boot'), parentId: SERVER, selectors: sel('tpm:policy:secure-boot') });
      await s.createEntry({ spiffeId: id('/group/rack7-sb'), parentId: SERVER, selectors: sel('tpm:policy:secure-boot', 'tpm:rack:7') });
      const viaGroup = await s.createEntry(workload('/svc/api', id('/group/secure-boot')));
      const viaRack = await s.createEntry(workload('/svc/rack', id('/group/rack7-sb')));
      const child = await s.createEntry(workload('/svc/api/child', id('/svc/api'), sel('unix:uid:7')));
      const underDirect = await s.createEntry(workload('/direct/sub', id('/direct'), sel('unix:uid:9')));
      await s.createEntry(workload('/other-agent/sub', id('/other-agent'), sel('unix:uid:9')));
      const fakeGroup = await s.createEntry({ spiffeId: id('/fake-group'), parentId: agent(3), selectors: sel('tpm:policy:secure-boot') });
      await s.createEntry(workload('/cycle/a', id('/svc/api/child'), sel('unix:uid:10')));
      const cycleB = await s.createEntry(workload('/svc/api', id('/cycle/a'), sel('unix:uid:11')));

      const got = await s.authorizedEntries(agent(1), sel('tpm:policy:secure-boot', 'tpm:ek-hash:abc'));
      expect(got.entries.map((e) => e.spiffeId.path).sort()).toEqual(['/cycle/a', '/direct', '/direct/sub', '/svc/api', '/svc/api', '/svc/api/child']);
      const gotIds = new Set(got.entries.map((e) => e.id));
      for (const e of [mine, viaGroup, child, underDirect, cycleB]) expect(gotIds.has(e.id)).toBe(true);
      for (const e of [notMine, viaRack, fakeGroup]) expect(gotIds.has(e.id)).toBe(false);
      expect(got.revision).toBe(await s.currentRevision());
      expect((await s.authorizedEntries(agent(4), sel('tpm:policy:secure-boot', 'tpm:rack:7'))).entries.map((e) => e.id)).toContain(viaRack.id);
      expect((await s.authorizedEntries(agent(5), sel('tpm:policy:none'))).entries).toEqual([]);
      await expect(s.authorizedEntries(TrustDomain.parse('example.org').id(), [])).rejects.toBeInstanceOf(InvalidRecordError);
    });

    it('follows writes and deletions made through another store object, and leaves out expired entries', async () => {
      await s.createEntry(workload('/one'));
      const at = new Date('2030-01-01T00:00:00Z');
      expect((await s.authorizedEntries(agent(1), [], at)).entries).toHaveLength(1);
      const other = await another();
      const two = await other.createEntry({ ...workload('/two'), expiresAt: new Date('2030-06-01T00:00:00Z') });
      await other.createEntry(workload('/two/below', id('/two'), sel('unix:uid:3')));
      const got = await s.authorizedEntries(agent(1), [], at);
      expect(got.entries).toHaveLength(3);
      expect(got.revision).toBe(await other.currentRevision());
      expect((await s.authorizedEntries(agent(1), [], new Date('2031-01-01T00:00:00Z'))).entries.map((e) => e.spiffeId.path)).toEqual(['/one']);
      await other.deleteEntry(two.id);
      expect((await s.authorizedEntries(agent(1), [], at)).entries.map((e) => e.spiffeId.path)).toEqual(['/one']);
    });

    it('rebuilds from scratch when the tombstones it needed were pruned by another writer', async () => {
      const x = await s.createEntry(workload('/x'));
      const y = await s.createEntry(workload('/y'));
      expect((await s.authorizedEntries(agent(1), [])).entries).toHaveLength(2);
      const other = await another();
      await other.deleteEntry(x.id);
      now = new Date(now.getTime() + 2 * 24 * 3600 * 1000);
      await other.deleteEntry(y.id);
      await other.createEntry(workload('/z'));
      expect((await s.authorizedEntries(agent(1), [], now)).entries.map((e) => e.spiffeId.path)).toEqual(['/z']);
    });
  });

  describe('attested nodes', () => {
    it('records an attestation, renews it, and lists by status, selectors and last seen', async () => {
      const n = await s.recordAttestation(attestation(1));
      expect(n.status).toEqual({ kind: 'active', svid: { serial: '01', notAfter: new Date('2030-01-02T00:00:00Z') } });
      expect(n.firstSeen).toEqual(now);
      expect(n.lastQuote).toEqual({ clock: 1000n, resetCount: 1, restartCount: 0 });
      expect(n.akName).toBe('000b' + 'aa'.repeat(32));
      expect(await s.getNode(agent(1))).toEqual(n);

      now = new Date('2030-01-01T12:00:00Z');
      const renewed = await s.renewNode(agent(1), {
        svid: { serial: '02', notAfter: new Date('2030-01-03T00:00:00Z') },
        quote: { clock: 2n ** 64n - 1n, resetCount: 0xffffffff, restartCount: 1 },
        selectors: sel('tpm:policy:secure-boot'),
        ifSvidSerial: '01',
      });
      expect(renewed.status.kind === 'active' && renewed.status.svid.serial).toBe('02');
      expect(renewed.lastQuote).toEqual({ clock: 2n ** 64n - 1n, resetCount: 0xffffffff, restartCount: 1 });
      expect(renewed.lastSeen).toEqual(now);
      expect(renewed.firstSeen).toEqual(new Date('2030-01-01T00:00:00Z'));
      expect(renewed.selectors).toEqual(sel('tpm:policy:secure-boot'));
      expect(renewed.revision).toBeGreaterThan(n.revision);
      await expect(
        s.renewNode(agent(1), { svid: { serial: '03', notAfter: now }, quote: renewed.lastQuote, selectors: [], ifSvidSerial: '01' }),
      ).rejects.toBeInstanceOf(ConflictError);

      now = new Date('2030-01-01T18:00:00Z');
      await s.recordAttestation(attestation(2));
      await s.banNode(agent(2), 'EK reported stolen');
      expect((await s.listNodes({ status: 'active' })).items.map((x) => x.agentId.toString())).toEqual([agent(1).toString()]);
      expect((await s.listNodes({ selectors: { match: 'exact', selectors: sel('tpm:policy:secure-boot') } })).items).toHaveLength(1);
      expect((await s.listNodes({ selectors: { match: 'superset', selectors: sel('tpm:policy:secure-boot') } })).items).toHaveLength(2);
      expect((await s.listNodes({ lastSeenBefore: new Date('2030-01-01T15:00:00Z') })).items.map((x) => x.agentId.toString())).toEqual([agent(1).toString()]);
      expect((await s.getNodeByEkHash(ekHash(2).toUpperCase()))?.status.kind).toBe('banned');
      expect(await s.getNodeByEkHash(ekHash(7))).toBeUndefined();
      await expect(s.renewNode(agent(9), { svid: { serial: '1', notAfter: now }, quote: n.lastQuote, selectors: [] })).rejects.toBeInstanceOf(NotFoundError);
    });

    it('pages nodes in agent-ID order', async () => {
      for (const k of [5, 3, 9, 1, 7]) await s.recordAttestation(attestation(k));
      const p1 = await s.listNodes({}, { limit: 2 });
      const p2 = await s.listNodes({}, { limit: 2, cursor: p1.nextCursor! });
      const p3 = await s.listNodes({}, { limit: 2, cursor: p2.nextCursor! });
      expect([...p1.items, ...p2.items, ...p3.items].map((x) => x.ekPublicHash)).toEqual([1, 3, 5, 7, 9].map(ekHash));
      expect(p3.nextCursor).toBeUndefined();
      await expect(s.listNodes({}, { cursor: 'bm9wZQ' })).rejects.toBeInstanceOf(InvalidRecordError);
    });

    it('evicts (re-attestation allowed), bans (refused until unbanned) and unbans', async () => {
      await s.recordAttestation(attestation(1));
      const ev = await s.evictNode(agent(1));
      expect(ev.status).toEqual({ kind: 'evicted', since: now });
      await expect(s.renewNode(agent(1), { svid: { serial: '05', notAfter: now }, quote: ev.lastQuote, selectors: [] })).rejects.toSatisfy(
        (e) => e instanceof NodeNotActiveError && e.status === 'evicted',
      );
      expect((await s.recordAttestation(attestation(1, '06'))).status.kind).toBe('active');

      const banned = await s.banNode(agent(1), 'quote clock went backwards');
      expect(banned.status).toMatchObject({ kind: 'banned', reason: 'quote clock went backwards' });
      const err = await s.recordAttestation(attestation(1, '07')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NodeBannedError);
      expect((err as NodeBannedError).reason).toBe('quote clock went backwards');
      await expect(s.renewNode(agent(1), { svid: { serial: '08', notAfter: now }, quote: ev.lastQuote, selectors: [] })).rejects.toBeInstanceOf(NodeBannedError);
      expect((await s.getNode(agent(1)))?.status.kind).toBe('banned');
      await expect(s.evictNode(agent(1))).rejects.toBeInstanceOf(ConflictError);

      expect((await s.unbanNode(agent(1))).status.kind).toBe('evicted');
      await expect(s.unbanNode(agent(1))).rejects.toBeInstanceOf(ConflictError);
      expect((await s.recordAttestation(attestation(1, '08'))).status.kind).toBe('active');
      await expect(s.banNode(agent(1), ' ')).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.banNode(agent(1), 'a\u0000b')).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.evictNode(agent(3))).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.banNode(agent(3), 'x')).rejects.toBeInstanceOf(NotFoundError);
      await expect(s.unbanNode(agent(3))).rejects.toBeInstanceOf(NotFoundError);
    });

    it('marks an active node drifted with its reason; it cannot renew, and attests again', async () => {
      await s.recordAttestation(attestation(1));
      await expect(s.markNodeDrifted(agent(1), 'x', { ifSvidSerial: '00' })).rejects.toBeInstanceOf(ConflictError);
      await expect(s.markNodeDrifted(agent(1), ' ')).rejects.toBeInstanceOf(InvalidRecordError);
      expect((await s.getNode(agent(1)))!.status.kind).toBe('active');
      const d = await s.markNodeDrifted(agent(1), 'PCR 7 is not in policy secure-boot', { ifSvidSerial: '01' });
      expect(d.status).toEqual({ kind: 'drifted', since: now, reason: 'PCR 7 is not in policy secure-boot' });
      expect((await s.listNodes({ status: 'drifted' })).items.map((n) => n.agentId.toString())).toEqual([agent(1).toString()]);
      await expect(s.renewNode(agent(1), { svid: { serial: '02', notAfter: now }, quote: d.lastQuote, selectors: [] })).rejects.toSatisfy(
        (e) => e instanceof NodeNotActiveError && e.status === 'drifted',
      );
      await expect(s.markNodeDrifted(agent(1), 'again')).rejects.toBeInstanceOf(NodeNotActiveError);
      await expect(s.markNodeDrifted(agent(2), 'nobody')).rejects.toBeInstanceOf(NotFoundError);
      const back = await s.recordAttestation(attestation(1, '03'));
      expect(back.status.kind === 'active' && back.status.svid.serial).toBe('03');
      await s.banNode(agent(1), 'stolen');
      await expect(s.markNodeDrifted(agent(1), 'x')).rejects.toBeInstanceOf(NodeBannedError);
    });

    it('keeps one node per EK and rejects malformed attestation records, recording nothing', async () => {
      await s.recordAttestation(attestation(1));
      const dup = await s.recordAttestation({ ...attestation(2), ekPublicHash: ekHash(1) }).catch((e: unknown) => e);
      expect(dup).toBeInstanceOf(ConflictError);
      expect((dup as ConflictError).existingId).toBe(agent(1).toString());
      await expect(s.recordAttestation({ ...attestation(1), ekPublicHash: ekHash(5) })).rejects.toBeInstanceOf(ConflictError);
      const bad = async (a: NodeAttestation, field: string) => {
        const e = await s.recordAttestation(a).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(InvalidRecordError);
        expect((e as InvalidRecordError).field).toBe(field);
      };
      await bad({ ...attestation(3), ekPublicHash: 'ABC' }, 'ekPublicHash');
      await bad({ ...attestation(3), akName: 'xyz' }, 'akName');
      await bad({ ...attestation(3), quote: { clock: -1n, resetCount: 0, restartCount: 0 } }, 'quote.clock');
      await bad({ ...attestation(3), quote: { clock: 1n, resetCount: 2 ** 32, restartCount: 0 } }, 'quote.resetCount');
      await bad({ ...attestation(3), svid: { serial: 'XY', notAfter: now } }, 'svid.serial');
      await bad({ ...attestation(3), agentId: TrustDomain.parse('example.org').id() }, 'agentId');
      expect(await s.getNode(agent(2))).toBeUndefined();
      expect(await s.getNode(agent(3))).toBeUndefined();
      expect((await s.listNodes()).items).toHaveLength(1);
    });

    it('lets exactly one of two racing renewals of the same SVID win', async () => {
      await s.recordAttestation(attestation(1));
      const b = await another();
      let serial = '01';
      for (let round = 2; round < 12; round++) {
        const renew = (st: Datastore, suffix: string) =>
          st.renewNode(agent(1), { svid: { serial: `${round}${suffix}`, notAfter: now }, quote: attestation(1).quote, selectors: [], ifSvidSerial: serial });
        const outcomes = await Promise.allSettled([renew(s, 'a'), renew(b, 'b')]);
        expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
        expect((outcomes.find((o) => o.status === 'rejected') as PromiseRejectedResult).reason).toBeInstanceOf(ConflictError);
        const node = (await s.getNode(agent(1)))!;
        serial = node.status.kind === 'active' ? node.status.svid.serial : 'none';
        expect(serial.startsWith(String(round))).toBe(true);
      }
    });
  });

  describe('bundles and the CA journal', () => {
    const own = TrustDomain.parse('example.org');
    const fed = TrustDomain.parse('partner.test');

    it('keeps the own bundle with a strictly increasing sequence', async () => {
      expect(await s.getOwnBundle(own)).toBeUndefined();
      await s.setOwnBundle(own, '{"keys":[],"spiffe_sequence":1}', 1);
      await expect(s.setOwnBundle(own, '{"keys":[]}', 1)).rejects.toBeInstanceOf(ConflictError);
      await expect(s.setOwnBundle(own, '{"keys":[]}', 0)).rejects.toBeInstanceOf(ConflictError);
      now = new Date('2030-01-01T00:00:09Z');
      const b = await s.setOwnBundle(own, '{"keys":[],"spiffe_sequence":2}', 2);
      expect(b).toEqual({ trustDomain: own, jwks: '{"keys":[],"spiffe_sequence":2}', sequence: 2, updatedAt: now });
      expect(await s.getOwnBundle(own)).toEqual(b);
      expect(await s.getFederatedBundle(own)).toBeUndefined();
      await expect(s.setOwnBundle(own, 'not json', 3)).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.setOwnBundle(own, '{"no":"keys"}', 3)).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.setOwnBundle(own, '{"keys":[]}', -1)).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.setFederatedBundle(own, '{"keys":[]}')).rejects.toBeInstanceOf(ConflictError);
      expect((await s.getOwnBundle(own))?.sequence).toBe(2);
    });

    it('never lets the bundle sequence go back or be written twice when two store objects race', async () => {
      const b = await another();
      const accepted: number[] = [];
      const push = (st: Datastore, seq: number) =>
        st.setOwnBundle(own, `{"keys":[],"spiffe_sequence":${seq}}`, seq).then(
          (x) => void accepted.push(x.sequence),
          (e: unknown) => expect(e).toBeInstanceOf(ConflictError),
        );
      // Both try every sequence, B in reverse: they cross in the middle.
      const seqs = Array.from({ length: 30 }, (_, i) => i + 1);
      await Promise.all([
        (async () => {
          for (const q of seqs) await push(s, q);
        })(),
        (async () => {
          for (const q of [...seqs].reverse()) await push(b, q);
        })(),
      ]);
      expect(new Set(accepted).size).toBe(accepted.length);
      // In commit order every accepted sequence is above the one before it.
      for (let i = 1; i < accepted.length; i++) expect(accepted[i]!).toBeGreaterThan(accepted[i - 1]!);
      expect((await s.getOwnBundle(own))?.sequence).toBe(30);
      expect((await b.getOwnBundle(own))?.jwks).toBe('{"keys":[],"spiffe_sequence":30}');
    });

    it('sets, lists and deletes federated bundles, refusing to delete one in use', async () => {
      await s.setFederatedBundle(fed, '{"keys":[]}', 300);
      await s.setFederatedBundle(TrustDomain.parse('a.test'), '{"keys":[]}');
      expect((await s.listFederatedBundles()).map((b) => b.trustDomain.name)).toEqual(['a.test', 'partner.test']);
      expect((await s.getFederatedBundle(fed))?.refreshHint).toBe(300);
      const updated = await s.setFederatedBundle(fed, '{"keys":[{"kty":"EC"}]}');
      expect(updated.refreshHint).toBeUndefined();
      expect(updated.jwks).toBe('{"keys":[{"kty":"EC"}]}');
      await expect(s.setFederatedBundle(fed, '{"keys":[]}', 0)).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.setOwnBundle(fed, '{"keys":[]}', 1)).rejects.toBeInstanceOf(ConflictError);
      expect(await s.getOwnBundle(fed)).toBeUndefined();
      const e = await s.createEntry({ ...workload('/x'), federatesWith: [fed] });
      await expect(s.deleteFederatedBundle(fed)).rejects.toBeInstanceOf(ConflictError);
      await s.deleteEntry(e.id);
      await s.deleteFederatedBundle(fed);
      expect(await s.getFederatedBundle(fed)).toBeUndefined();
      await expect(s.deleteFederatedBundle(fed)).rejects.toBeInstanceOf(NotFoundError);
      expect((await s.listFederatedBundles()).map((b) => b.trustDomain.name)).toEqual(['a.test']);
    });

    it('stores one opaque CA journal per server', async () => {
      expect(await s.getCaJournal('server-a')).toBeUndefined();
      await s.putCaJournal('server-a', '{"x509":[1]}');
      await s.putCaJournal('server-b', '{"x509":[2]}');
      await s.putCaJournal('server-a', '{"x509":[3]}');
      expect(await s.getCaJournal('server-a')).toBe('{"x509":[3]}');
      expect(await (await another()).getCaJournal('server-b')).toBe('{"x509":[2]}');
      await expect(s.putCaJournal('server-a', '{oops')).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.putCaJournal('', '{}')).rejects.toBeInstanceOf(InvalidRecordError);
      expect(await s.getCaJournal('server-a')).toBe('{"x509":[3]}');
    });
  });

  describe('nonces', () => {
    it('is single-use, expires, tells unknown/used/expired apart, and prunes', async () => {
      const exp = new Date('2030-01-01T00:01:00Z');
      await s.issueNonce(nonce(1), exp, 'ek:abc');
      await s.issueNonce(nonce(2), exp, 'ek:def');
      await expect(s.issueNonce(nonce(1), exp, 'again')).rejects.toBeInstanceOf(ConflictError);
      await expect(s.issueNonce('short', exp, '')).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.issueNonce(nonce(9), exp, 'nul\u0000')).rejects.toBeInstanceOf(InvalidRecordError);
      await expect(s.issueNonce(nonce(9), new Date(Number.NaN), '')).rejects.toBeInstanceOf(InvalidRecordError);
      expect(await s.consumeNonce(nonce(1), now)).toEqual({ kind: 'consumed', context: 'ek:abc' });
      expect(await s.consumeNonce(nonce(1), now)).toEqual({ kind: 'used', usedAt: now });
      expect(await s.consumeNonce(nonce(3), now)).toEqual({ kind: 'unknown' });
      expect(await s.consumeNonce(nonce(2), exp)).toEqual({ kind: 'expired', expiredAt: exp });
      expect(await s.pruneNonces(new Date('2030-01-01T00:00:59Z'))).toBe(0);
      expect(await s.pruneNonces(exp)).toBe(2);
      expect(await s.consumeNonce(nonce(2), now)).toEqual({ kind: 'unknown' });
    });

    it('lets exactly one of three store objects consume each nonce', async () => {
      const count = 150;
      const exp = new Date('2030-01-01T01:00:00Z');
      const all = Array.from({ length: count }, (_, i) => nonce(i));
      for (const n of all) await s.issueNonce(n, exp, `ctx-${n}`);
      const stores = [s, await another(), await another()];
      // Each store object consumes every nonce, eight at a time; the odd one backwards, so they meet.
      const results = await Promise.all(
        stores.map(async (st, i) => {
          const order = i % 2 ? [...all].reverse() : all;
          const out = new Map<string, string>();
          for (let k = 0; k < order.length; k += 8) {
            const chunk = order.slice(k, k + 8);
            const got = await Promise.all(chunk.map((n) => st.consumeNonce(n, now)));
            chunk.forEach((n, j) => out.set(n, got[j]!.kind === 'consumed' ? `consumed:${(got[j] as { context: string }).context}` : got[j]!.kind));
          }
          return out;
        }),
      );
      for (const n of all) {
        const kinds = results.map((r) => r.get(n));
        expect(kinds.filter((k) => k === `consumed:ctx-${n}`)).toHaveLength(1);
        expect(kinds.filter((k) => k === 'used')).toHaveLength(stores.length - 1);
      }
    });
  });

  describe('store revision and change feed', () => {
    it('bumps the revision on entry, node and bundle writes and tells subscribers after commit, once', async () => {
      const seen: StoreChange[] = [];
      const off = s.subscribe((c) => seen.push(c));
      const r0 = await s.currentRevision();
      await s.createEntry(workload('/a'));
      await s.setFederatedBundle(TrustDomain.parse('p.test'), '{"keys":[]}');
      await s.recordAttestation(attestation(1));
      await s.createEntry(workload('/a')).catch(() => undefined); // conflict: no change
      await s.issueNonce(nonce(1), new Date('2031-01-01T00:00:00Z'), ''); // nonces are not store changes
      await s.putCaJournal('x', '{}');
      await nextTick();
      // a change coming back from the database (NOTIFY) must not be told twice
      await new Promise((r) => setTimeout(r, 200));
      expect(seen).toEqual([
        { kind: 'entries', revision: r0 + 1 },
        { kind: 'bundles', revision: r0 + 2 },
        { kind: 'nodes', revision: r0 + 3 },
      ]);
      expect(await s.currentRevision()).toBe(r0 + 3);
      off();
      await s.createEntry(workload('/b'));
      await new Promise((r) => setTimeout(r, 100));
      expect(seen).toHaveLength(3);
    });

    it('numbers writes through two store objects with one increasing revision', async () => {
      const b = await another();
      const revs = await Promise.all(
        Array.from({ length: 20 }, (_, i) => (i % 2 ? s : b).createEntry(workload(`/r/${i}`)).then((e) => e.revision)),
      );
      expect(new Set(revs).size).toBe(20);
      expect(Math.max(...revs)).toBe(await b.currentRevision());
      expect(await s.currentRevision()).toBe(await b.currentRevision());
    });

    it.skipIf(!backend.crossInstanceFeed)('tells the subscribers of another store object within a second', async () => {
      const b = await another();
      const seenB: StoreChange[] = [];
      const seenA: StoreChange[] = [];
      b.subscribe((c) => seenB.push(c));
      s.subscribe((c) => seenA.push(c));
      const e = await s.createEntry(workload('/across'));
      const took = await waitFor('the change at server B', () => seenB.length > 0, 1000);
      expect(took).toBeLessThan(1000);
      expect(seenB).toEqual([{ kind: 'entries', revision: e.revision }]);
      await b.recordAttestation(attestation(1));
      await waitFor('the node change at server A', () => seenA.length > 1, 1000);
      await new Promise((r) => setTimeout(r, 100));
      expect(seenA.map((c) => c.kind)).toEqual(['entries', 'nodes']);
      expect(seenB.map((c) => c.kind)).toEqual(['entries', 'nodes']);
      // and B's agents then get the entry
      expect((await b.authorizedEntries(agent(1), [])).entries.map((x) => x.id)).toEqual([e.id]);
    });
  });

  it('refuses every call once closed, with a StoreError', async () => {
    const e = await s.createEntry(workload('/keep'));
    await s.close();
    await expect(s.getEntry(e.id)).rejects.toBeInstanceOf(StoreError);
    await expect(s.createEntry(workload('/more'))).rejects.toBeInstanceOf(StoreError);
    const again = await another();
    expect((await again.getEntry(e.id))?.spiffeId.toString()).toBe('spiffe://example.org/keep');
  });
});
