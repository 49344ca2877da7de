/** The entries admin API over the admin Unix socket: CRUD, batches, filters, paging, problem details. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestPki, MutableBundle, startTestApi, testBundle, unixRequest, type RunningApi, type TestPki } from './helpers.js';

let pki: TestPki;
let api: RunningApi;
const call = (method: string, path: string, body?: unknown) => unixRequest(api.socket, method, path, body);

const AGENT = 'spiffe://example.org/keel/agent/tpm/' + 'ab'.repeat(32);
const base = (path: string, extra: Record<string, unknown> = {}) => ({ spiffeId: `spiffe://example.org${path}`, parentId: AGENT, selectors: ['unix:uid:1000'], ...extra });

beforeAll(async () => {
  pki = await makeTestPki();
  api = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [])), plaintext: true });
});
afterAll(async () => {
  await api?.stop();
  pki?.cleanup();
});

describe('entry CRUD', () => {
  it('creates, shows, updates and deletes an entry', async () => {
    const c = await call('POST', '/v1/entries', base('/crud', { selectors: ['unix:uid:1000', 'unix:gid:50'], x509SvidTtl: 600, dnsNames: ['web.example.org'], hint: 'web', federatesWith: ['other.org'] }));
    expect(c.status).toBe(201);
    expect(c.contentType).toMatch(/^application\/json/);
    const e = c.json();
    expect(e).toMatchObject({
      spiffeId: 'spiffe://example.org/crud',
      parentId: AGENT,
      selectors: ['unix:gid:50', 'unix:uid:1000'],
      x509SvidTtl: 600,
      dnsNames: ['web.example.org'],
      federatesWith: ['other.org'],
      hint: 'web',
      admin: false,
    });
    expect(e.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(e.jwtSvidTtl).toBeUndefined();

    const s = await call('GET', `/v1/entries/${e.id}`);
    expect(s.status).toBe(200);
    expect(s.json()).toEqual(e);

    const u = await call('PATCH', `/v1/entries/${e.id}`, { selectors: ['unix:uid:2000'], x509SvidTtl: null, jwtSvidTtl: 120, ifRevision: e.revision });
    expect(u.status).toBe(200);
    expect(u.json()).toMatchObject({ selectors: ['unix:uid:2000'], jwtSvidTtl: 120 });
    expect(u.json().x509SvidTtl).toBeUndefined();
    expect(u.json().revision).toBeGreaterThan(e.revision);

    // The revision it was read at is stale now: compare-and-set refuses.
    const stale = await call('PATCH', `/v1/entries/${e.id}`, { hint: 'x', ifRevision: e.revision });
    expect(stale.status).toBe(409);
    expect(stale.json().type).toBe('urn:keel:problem:conflict');

    const d = await call('DELETE', `/v1/entries/${e.id}`);
    expect(d.status).toBe(200);
    expect(d.json().id).toBe(e.id);
    const gone = await call('GET', `/v1/entries/${e.id}`);
    expect(gone.status).toBe(404);
    expect(gone.contentType).toMatch(/^application\/problem\+json/);
    expect((await call('DELETE', `/v1/entries/${e.id}`)).status).toBe(404);

    const actions = api.audit.events.filter((x) => x.event === 'admin.change' && x.target === e.id).map((x) => (x.event === 'admin.change' ? x.action : ''));
    expect(actions).toEqual(['entry.create', 'entry.update', 'entry.delete']);
  });

  it('makes a node-group entry parented to the server ID', async () => {
    const r = await call('POST', '/v1/entries', { spiffeId: 'spiffe://example.org/nodes/prod', parentId: 'spiffe://example.org/keel/server', selectors: ['tpm:policy:prod'] });
    expect(r.status).toBe(201);
    expect(r.json().parentId).toBe('spiffe://example.org/keel/server');
  });

  it('refuses a duplicate entry with 409', async () => {
    expect((await call('POST', '/v1/entries', base('/dup'))).status).toBe(201);
    const again = await call('POST', '/v1/entries', base('/dup'));
    expect(again.status).toBe(409);
    expect(again.json()).toMatchObject({ type: 'urn:keel:problem:conflict', status: 409 });
  });
});

describe('validation', () => {
  it('lists every problem of a body with its JSON pointer', async () => {
    const r = await call('POST', '/v1/entries', {
      spiffeId: 'spiffe://example.org/a/../b',
      parentId: AGENT,
      selectors: ['unix:uid:1', 'no-colon'],
      x509SvidTtl: -5,
      colour: 'blue',
    });
    expect(r.status).toBe(400);
    expect(r.contentType).toMatch(/^application\/problem\+json/);
    const p = r.json();
    expect(p).toMatchObject({ type: 'urn:keel:problem:validation', title: 'Invalid request', status: 400 });
    const paths = p.errors.map((e: { path: string }) => e.path).sort();
    expect(paths).toEqual(['/colour', '/selectors/1', '/spiffeId', '/x509SvidTtl']);
    expect(p.errors.find((e: { path: string }) => e.path === '/spiffeId').message).toMatch(/"\.\." segment/);
  });

  it("refuses entries in keel's reserved /keel/ namespace: an agent's or the server's ID, or a parent that is neither", async () => {
    const before = (await call('GET', '/v1/entries?limit=1000')).json().entries.length;
    for (const spiffeId of [AGENT, 'spiffe://example.org/keel/server', 'spiffe://example.org/keel/agent/tpm/x', 'spiffe://example.org/keel/other']) {
      const r = await call('POST', '/v1/entries', base('/x', { spiffeId }));
      expect(r.status, spiffeId).toBe(400);
      expect(r.json().errors[0]).toMatchObject({ path: '/spiffeId' });
      expect(r.json().errors[0].message).toMatch(/reserved namespace \/keel\/|the server's own ID/);
    }
    const badParent = await call('POST', '/v1/entries', base('/x', { parentId: 'spiffe://example.org/keel/agent/tpm/short' }));
    expect(badParent.status).toBe(400);
    expect(badParent.json().errors[0]).toMatchObject({ path: '/parentId' });
    // Renaming an existing entry into the namespace is refused the same way.
    const ok = (await call('POST', '/v1/entries', base('/ordinary'))).json();
    const moved = await call('PATCH', `/v1/entries/${ok.id}`, { spiffeId: AGENT });
    expect(moved.status).toBe(400);
    expect((await call('GET', `/v1/entries/${ok.id}`)).json().spiffeId).toBe('spiffe://example.org/ordinary');
    await call('DELETE', `/v1/entries/${ok.id}`);
    expect((await call('GET', '/v1/entries?limit=1000')).json().entries.length).toBe(before);
  });

  it('refuses an entry of another trust domain, and one federating with its own', async () => {
    const r = await call('POST', '/v1/entries', base('/x', { spiffeId: 'spiffe://other.org/x' }));
    expect(r.status).toBe(400);
    expect(r.json().errors).toEqual([{ path: '/spiffeId', message: 'spiffe://other.org/x is not in trust domain example.org' }]);
    const f = await call('POST', '/v1/entries', base('/x', { federatesWith: ['ok.org', 'example.org'] }));
    expect(f.status).toBe(400);
    expect(f.json().errors[0].path).toBe('/federatesWith/1');
  });

  it('maps a store-level rule (DNS name) to a 400 with the field path', async () => {
    const r = await call('POST', '/v1/entries', base('/dns', { dnsNames: ['Bad_Name'] }));
    expect(r.status).toBe(400);
    expect(r.json().errors[0].path).toBe('/dnsNames');
  });

  it('names bad query parameters, malformed JSON, unknown routes', async () => {
    const q = await call('GET', '/v1/entries?limit=0&selectorMatch=some');
    expect(q.status).toBe(400);
    expect(q.json().errors.map((e: { path: string }) => e.path).sort()).toEqual(['?limit', '?selectorMatch']);
    const bad = await unixRequest(api.socket, 'POST', '/v1/entries', '{"spiffeId": ');
    expect(bad.status).toBe(400);
    expect(bad.contentType).toMatch(/^application\/problem\+json/);
    const nothing = await call('PATCH', '/v1/entries/00000000-0000-4000-8000-000000000000', {});
    expect(nothing.status).toBe(400);
    const nf = await call('GET', '/v1/nope');
    expect(nf.status).toBe(404);
    expect(nf.json().type).toBe('urn:keel:problem:not-found');
  });
});

describe('batches', () => {
  it('creates a batch in one go', async () => {
    const r = await call('POST', '/v1/entries/batch', { entries: [base('/b/1'), base('/b/2'), base('/b/3')] });
    expect(r.status).toBe(201);
    expect(r.json().results.map((x: { status: string }) => x.status)).toEqual(['done', 'done', 'done']);
  });

  it('writes nothing when one item is bad, and says which', async () => {
    const r = await call('POST', '/v1/entries/batch', { entries: [base('/c/1'), base('/b/2'), base('/c/3')] });
    expect(r.status).toBe(409);
    const p = r.json();
    expect(p.results.map((x: { status: string }) => x.status)).toEqual(['rolled-back', 'failed', 'rolled-back']);
    expect(p.results[1].error.status).toBe(409);
    const list = await call('GET', '/v1/entries?spiffeId=spiffe://example.org/c/1');
    expect(list.json().entries).toEqual([]);
    // Schema problems point into the array.
    const v = await call('POST', '/v1/entries/batch', { entries: [base('/d/1'), { ...base('/d/2'), selectors: [] }] });
    expect(v.status).toBe(400);
    expect(v.json().errors[0].path).toBe('/entries/1/selectors');
  });

  it('deletes a batch, all or nothing', async () => {
    const made = await call('POST', '/v1/entries/batch', { entries: [base('/e/1'), base('/e/2')] });
    const ids = made.json().results.map((x: { entry: { id: string } }) => x.entry.id);
    const miss = await call('POST', '/v1/entries/batch-delete', { ids: [ids[0], '00000000-0000-4000-8000-000000000000'] });
    expect(miss.status).toBe(404);
    expect((await call('GET', `/v1/entries/${ids[0]}`)).status).toBe(200);
    const ok = await call('POST', '/v1/entries/batch-delete', { ids });
    expect(ok.status).toBe(200);
    expect((await call('GET', `/v1/entries/${ids[0]}`)).status).toBe(404);
  });
});

describe('list filters and paging', () => {
  beforeAll(async () => {
    const P = 'spiffe://example.org/keel/agent/tpm/' + 'cd'.repeat(32);
    const r = await call('POST', '/v1/entries/batch', {
      entries: [
        { spiffeId: 'spiffe://example.org/f/a', parentId: P, selectors: ['unix:uid:1', 'unix:gid:1'] },
        { spiffeId: 'spiffe://example.org/f/b', parentId: P, selectors: ['unix:uid:1'] },
        { spiffeId: 'spiffe://example.org/f/c', parentId: P, selectors: ['unix:uid:2'], federatesWith: ['fed.org'] },
        { spiffeId: 'spiffe://example.org/f/d', parentId: P, selectors: ['unix:uid:2', 'unix:gid:1'], federatesWith: ['fed.org', 'x.org'] },
        { spiffeId: 'spiffe://example.org/f/e', parentId: P, selectors: ['unix:uid:3'], hint: 'e' },
      ],
    });
    expect(r.status).toBe(201);
  });
  const P = encodeURIComponent('spiffe://example.org/keel/agent/tpm/' + 'cd'.repeat(32));
  const ids = async (q: string) => ((await call('GET', `/v1/entries?parentId=${P}&${q}`)).json().entries as { spiffeId: string }[]).map((e) => e.spiffeId.slice(-1)).sort().join('');

  it('filters by parent, SPIFFE ID, selectors with each match mode, federation and hint', async () => {
    expect(await ids('')).toBe('abcde');
    expect(await ids('spiffeId=spiffe://example.org/f/c')).toBe('c');
    expect(await ids('selector=unix:uid:1&selectorMatch=exact')).toBe('b');
    expect(await ids('selector=unix:uid:1&selectorMatch=superset')).toBe('ab');
    expect(await ids('selector=unix:uid:1&selector=unix:gid:1&selectorMatch=subset')).toBe('ab');
    expect(await ids('selector=unix:uid:3&selector=unix:gid:1&selectorMatch=any')).toBe('ade');
    expect(await ids('federatesWith=fed.org')).toBe('cd');
    expect(await ids('federatesWith=x.org&federatesWithMatch=any')).toBe('d');
    expect(await ids('hint=e')).toBe('e');
  });

  it('pages with a cursor until there is none', async () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await call('GET', `/v1/entries?parentId=${P}&limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(r.status).toBe(200);
      const body = r.json();
      expect(body.entries.length).toBeLessThanOrEqual(2);
      seen.push(...body.entries.map((e: { spiffeId: string }) => e.spiffeId));
      cursor = body.nextCursor;
      pages++;
    } while (cursor && pages < 10);
    expect(seen.map((s) => s.slice(-1)).sort().join('')).toBe('abcde');
    expect(new Set(seen).size).toBe(5);
    expect(pages).toBeGreaterThanOrEqual(3);
  });
});
