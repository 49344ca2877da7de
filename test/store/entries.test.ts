import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  ConflictError,
  InvalidRecordError,
  NotFoundError,
  type EntryInput,
  type RegistrationEntry,
  type StoreChange,
} from '../../src/server/store/index.js';
import { agent, id, openTemp, sel, SERVER, TrustDomain, workload, type TempStore } from './helpers.js';

let t: TempStore;
beforeEach(() => {
  t = openTemp();
});
afterEach(async () => {
  await t.cleanup();
});

describe('entry CRUD', () => {
  it('creates, reads, updates and deletes an entry with every field', async () => {
    const fed = TrustDomain.parse('partner.test');
    await t.store.setFederatedBundle(fed, '{"keys":[]}');
    const created = await t.store.createEntry({
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
      expiresAt: new Date('2030-01-01T00:00:00Z'),
    });
    expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
    // selectors come back sorted and de-duplicated
    expect(created.selectors.map((s) => `${s.type}:${s.value}`)).toEqual(['unix:gid:50', 'unix:uid:1000']);
    expect(created.federatesWith.map((d) => d.name)).toEqual(['partner.test']);
    expect(created.revision).toBe(await t.store.currentRevision());

    const read = await t.store.getEntry(created.id);
    expect(read?.spiffeId.toString()).toBe('spiffe://example.org/web');
    expect(read?.parentId.equals(agent(1))).toBe(true);
    expect(read).toMatchObject({ x509SvidTtl: 3600, jwtSvidTtl: 300, admin: true, hint: 'frontend' });
    expect(read?.expiresAt?.toISOString()).toBe('2030-01-01T00:00:00.000Z');

    const updated = await t.store.updateEntry(created.id, { hint: null, x509SvidTtl: null, selectors: sel('unix:uid:2000') });
    expect(updated.hint).toBeUndefined();
    expect(updated.x509SvidTtl).toBeUndefined();
    expect(updated.jwtSvidTtl).toBe(300);
    expect(updated.revision).toBeGreaterThan(created.revision);
    expect(updated.createdAt.getTime()).toBe(created.createdAt.getTime());

    await expect(t.store.updateEntry(created.id, { admin: false }, { ifRevision: created.revision })).rejects.toBeInstanceOf(ConflictError);
    const deleted = await t.store.deleteEntry(created.id);
    expect(deleted.id).toBe(created.id);
    expect(await t.store.getEntry(created.id)).toBeUndefined();
    await expect(t.store.deleteEntry(created.id)).rejects.toBeInstanceOf(NotFoundError);
    await expect(t.store.updateEntry(created.id, { admin: true })).rejects.toBeInstanceOf(NotFoundError);
  });

  it('refuses a second entry with the same SPIFFE ID, parent and selector set, naming the existing one', async () => {
    const first = await t.store.createEntry(workload('/db', agent(1), sel('unix:uid:1', 'unix:gid:2')));
    const err = await t.store.createEntry(workload('/db', agent(1), sel('unix:gid:2', 'unix:uid:1'))).catch((e) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect(err.existingId).toBe(first.id);
    expect(err.message).toContain('spiffe://example.org/db');
    // a different selector set or parent is a different entry
    await t.store.createEntry(workload('/db', agent(1), sel('unix:uid:1')));
    await t.store.createEntry(workload('/db', agent(2), sel('unix:uid:1', 'unix:gid:2')));
    // an update into an existing triple is refused too
    const other = await t.store.createEntry(workload('/db', agent(3)));
    await expect(t.store.updateEntry(other.id, { parentId: agent(1), selectors: sel('unix:uid:1') })).rejects.toBeInstanceOf(ConflictError);
  });

  it('rejects bad entries with the field named', async () => {
    const bad = async (input: EntryInput, field: string) => {
      const e = await t.store.createEntry(input).catch((x) => x);
      expect(e).toBeInstanceOf(InvalidRecordError);
      expect(e.field).toBe(field);
    };
    await bad({ ...workload('/a'), selectors: [] }, 'selectors');
    await bad({ ...workload('/a'), selectors: [{ type: 'Unix', value: 'x' }] }, 'selectors');
    await bad({ ...workload('/a'), x509SvidTtl: 0 }, 'x509SvidTtl');
    await bad({ ...workload('/a'), jwtSvidTtl: 1.5 }, 'jwtSvidTtl');
    await bad({ ...workload('/a'), dnsNames: ['Bad_Name'] }, 'dnsNames');
    await bad({ ...workload('/a'), federatesWith: [TrustDomain.parse('example.org')] }, 'federatesWith');
    await bad({ ...workload('/a'), parentId: TrustDomain.parse('other.org').child('/agent') }, 'parentId');
    await bad({ ...workload('/a'), id: 'not-a-uuid' }, 'id');
    await bad({ ...workload('/a'), spiffeId: td0() }, 'spiffeId');
    expect((await t.store.listEntries()).items).toHaveLength(0);
  });
});

function td0() {
  return TrustDomain.parse('example.org').id();
}

describe('listing entries', () => {
  let a: RegistrationEntry, b: RegistrationEntry, c: RegistrationEntry, d: RegistrationEntry;
  beforeEach(async () => {
    const p1 = TrustDomain.parse('p1.test');
    const p2 = TrustDomain.parse('p2.test');
    a = await t.store.createEntry({ ...workload('/a', agent(1), sel('unix:uid:1')), federatesWith: [p1] });
    b = await t.store.createEntry({ ...workload('/b', agent(1), sel('unix:uid:1', 'unix:gid:1')), federatesWith: [p1, p2] });
    c = await t.store.createEntry({ ...workload('/c', agent(2), sel('unix:uid:1', 'unix:gid:1', 'unix:user:x')), hint: 'h' });
    d = await t.store.createEntry(workload('/a', agent(2), sel('unix:gid:1')));
  });
  const ids = (es: readonly RegistrationEntry[]) => es.map((e) => e.id).sort();

  it('filters by parent and SPIFFE ID', async () => {
    expect(ids((await t.store.listEntries({ parentId: agent(1) })).items)).toEqual(ids([a, b]));
    expect(ids((await t.store.listEntries({ spiffeId: id('/a') })).items)).toEqual(ids([a, d]));
    expect(ids((await t.store.listEntries({ spiffeId: id('/a'), parentId: agent(2) })).items)).toEqual(ids([d]));
    expect(ids((await t.store.listEntries({ hint: 'h' })).items)).toEqual(ids([c]));
  });

  it('matches selector sets exactly, as subset, superset and any', async () => {
    const q = (match: 'exact' | 'subset' | 'superset' | 'any', ...s: string[]) =>
      t.store.listEntries({ selectors: { match, selectors: sel(...s) } }).then((p) => ids(p.items));
    expect(await q('exact', 'unix:gid:1', 'unix:uid:1')).toEqual(ids([b]));
    expect(await q('subset', 'unix:uid:1', 'unix:gid:1')).toEqual(ids([a, b, d]));
    expect(await q('superset', 'unix:uid:1', 'unix:gid:1')).toEqual(ids([b, c]));
    expect(await q('any', 'unix:user:x', 'unix:gid:1')).toEqual(ids([b, c, d]));
    expect(await q('any', 'unix:uid:404')).toEqual([]);
  });

  it('filters by federated trust domains', async () => {
    const q = (match: 'exact' | 'subset' | 'superset' | 'any', ...names: string[]) =>
      t.store.listEntries({ federatesWith: { match, trustDomains: names.map((n) => TrustDomain.parse(n)) } }).then((p) => ids(p.items));
    expect(await q('any', 'p2.test')).toEqual(ids([b]));
    expect(await q('superset', 'p1.test')).toEqual(ids([a, b]));
    expect(await q('exact', 'p1.test')).toEqual(ids([a]));
  });

  it('pages with a cursor through every entry exactly once', async () => {
    for (let i = 0; i < 23; i++) await t.store.createEntry(workload(`/many/${i}`, agent(9)));
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await t.store.listEntries({}, { limit: 5, ...(cursor ? { cursor } : {}) });
      seen.push(...page.items.map((e) => e.id));
      cursor = page.nextCursor;
      pages++;
    } while (cursor);
    expect(pages).toBe(6); // 27 entries in pages of 5
    expect(seen).toHaveLength(27);
    expect(new Set(seen).size).toBe(27);
    expect([...seen].sort()).toEqual(seen);
    await expect(t.store.listEntries({}, { cursor: '!!' })).rejects.toBeInstanceOf(InvalidRecordError);
    await expect(t.store.listEntries({}, { limit: 0 })).rejects.toBeInstanceOf(InvalidRecordError);
  });
});

describe('batches', () => {
  it('writes nothing when one item is bad, and says which', async () => {
    const before = await t.store.currentRevision();
    const r = await t.store.createEntries([workload('/x'), workload('/y'), { ...workload('/z'), selectors: [] }, workload('/x')]);
    expect(r.committed).toBe(false);
    expect(r.results.map((x) => x.status)).toEqual(['rolled-back', 'rolled-back', 'failed', 'failed']);
    const [, , third, fourth] = r.results;
    expect(third?.status === 'failed' && third.error).toBeInstanceOf(InvalidRecordError);
    expect(fourth?.status === 'failed' && fourth.error).toBeInstanceOf(ConflictError); // duplicate of item 0 in the same batch
    expect((await t.store.listEntries()).items).toHaveLength(0);
    expect(await t.store.currentRevision()).toBe(before);
  });

  it('writes every item of a good batch in one revision', async () => {
    const r = await t.store.createEntries([workload('/x'), workload('/y'), workload('/z')]);
    expect(r.committed).toBe(true);
    const values = r.results.map((x) => (x.status === 'done' ? x.value : undefined));
    expect(values.every((v) => v !== undefined)).toBe(true);
    expect(new Set(values.map((v) => v!.revision)).size).toBe(1);
    expect((await t.store.listEntries()).items).toHaveLength(3);

    const del = await t.store.deleteEntries([values[0]!.id, '00000000-0000-0000-0000-000000000000']);
    expect(del.committed).toBe(false);
    expect(del.results.map((x) => x.status)).toEqual(['rolled-back', 'failed']);
    expect((await t.store.listEntries()).items).toHaveLength(3);
    const ok = await t.store.deleteEntries([values[0]!.id, values[1]!.id]);
    expect(ok.committed).toBe(true);
    expect((await t.store.listEntries()).items.map((e) => e.id)).toEqual([values[2]!.id]);
  });
});

describe('authorizedEntries', () => {
  it('gives an agent its own entries, its node groups\u2019 entries and their descendants, and nothing else', async () => {
    const s = t.store;
    const mine = await s.createEntry(workload('/direct', agent(1)));
    const notMine = await s.createEntry(workload('/other-agent', agent(2)));
    // node groups: parented to the server, selectors are node selectors
    await s.createEntry({ spiffeId: id('/group/secure-boot'), parentId: SERVER, selectors: sel('tpm:policy:secure-boot') });
    await s.createEntry({ spiffeId: id('/group/rack7-sb'), parentId: SERVER, selectors: sel('tpm:policy:secure-boot', 'tpm:rack:7') });
    await s.createEntry({ spiffeId: id('/group/gpu'), parentId: SERVER, selectors: sel('tpm:class:gpu') });
    const viaGroup = await s.createEntry(workload('/svc/api', id('/group/secure-boot')));
    const viaRack = await s.createEntry(workload('/svc/rack', id('/group/rack7-sb')));
    const viaGpu = await s.createEntry(workload('/svc/gpu', id('/group/gpu')));
    // descendants two levels down from a group entry, and from a direct one
    const child = await s.createEntry(workload('/svc/api/child', id('/svc/api'), sel('unix:uid:7')));
    const grandchild = await s.createEntry(workload('/svc/api/child/grand', id('/svc/api/child'), sel('unix:uid:8')));
    const underDirect = await s.createEntry(workload('/direct/sub', id('/direct'), sel('unix:uid:9')));
    // below the other agent's entry: not ours
    await s.createEntry(workload('/other-agent/sub', id('/other-agent'), sel('unix:uid:9')));
    // a workload entry with tpm selectors but not parented to the server is no node group
    const fakeGroup = await s.createEntry({ spiffeId: id('/fake-group'), parentId: agent(3), selectors: sel('tpm:policy:secure-boot') });
    await s.createEntry(workload('/svc/fake', id('/fake-group')));
    // a cycle must not hang
    await s.createEntry(workload('/cycle/a', id('/svc/api/child/grand'), sel('unix:uid:10')));
    const cycleB = await s.createEntry(workload('/svc/api', id('/cycle/a'), sel('unix:uid:11')));

    const got = await s.authorizedEntries(agent(1), sel('tpm:policy:secure-boot', 'tpm:ek-hash:abc'));
    const names = got.entries.map((e) => e.spiffeId.path).sort();
    expect(names).toEqual(
      ['/direct', '/direct/sub', '/svc/api', '/svc/api', '/svc/api/child', '/svc/api/child/grand', '/cycle/a'].sort(),
    );
    const gotIds = new Set(got.entries.map((e) => e.id));
    for (const e of [mine, viaGroup, child, grandchild, underDirect, cycleB]) expect(gotIds.has(e.id)).toBe(true);
    for (const e of [notMine, viaRack, viaGpu, fakeGroup]) expect(gotIds.has(e.id)).toBe(false);
    expect(got.revision).toBe(await s.currentRevision());

    // the rack group needs both of its selectors
    const rack = await s.authorizedEntries(agent(4), sel('tpm:policy:secure-boot', 'tpm:rack:7'));
    expect(rack.entries.map((e) => e.id)).toContain(viaRack.id);
    // an agent with no matching selectors and no direct entries gets nothing
    expect((await s.authorizedEntries(agent(5), sel('tpm:policy:none'))).entries).toEqual([]);
  });

  it('sees writes made through another connection, and leaves out expired entries', async () => {
    const { SqliteDatastore } = await import('../../src/server/store/index.js');
    let now = new Date('2030-01-01T00:00:00Z');
    await t.store.createEntry(workload('/one'));
    expect((await t.store.authorizedEntries(agent(1), [], now)).entries).toHaveLength(1);
    const other = SqliteDatastore.open({ path: t.path });
    try {
      await other.createEntry({ ...workload('/two'), expiresAt: new Date('2030-06-01T00:00:00Z') });
      await other.createEntry({ ...workload('/two/below', id('/two'), sel('unix:uid:3')) });
    } finally {
      await other.close();
    }
    expect((await t.store.authorizedEntries(agent(1), [], now)).entries).toHaveLength(3);
    now = new Date('2031-01-01T00:00:00Z');
    // expired: gone, and so is what it vouched for
    expect((await t.store.authorizedEntries(agent(1), [], now)).entries.map((e) => e.spiffeId.path)).toEqual(['/one']);
  });
});

describe('change feed', () => {
  it('bumps the revision on entry, node and bundle writes and tells subscribers after commit', async () => {
    const seen: StoreChange[] = [];
    const off = t.store.subscribe((c) => seen.push(c));
    const r0 = await t.store.currentRevision();
    await t.store.createEntry(workload('/a'));
    await t.store.setFederatedBundle(TrustDomain.parse('p.test'), '{"keys":[]}');
    await t.store.createEntry(workload('/a')).catch(() => undefined); // conflict: no change
    await new Promise((r) => setTimeout(r, 0));
    expect(seen.map((c) => c.kind)).toEqual(['entries', 'bundles']);
    expect(seen.map((c) => c.revision)).toEqual([r0 + 1, r0 + 2]);
    expect(await t.store.currentRevision()).toBe(r0 + 2);
    off();
    await t.store.createEntry(workload('/b'));
    await new Promise((r) => setTimeout(r, 0));
    expect(seen).toHaveLength(2);
  });
});
