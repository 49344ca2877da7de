/**
 * Property tests of the admin API's input handling (pure request parsing, so
 * fastify.inject is enough here): any body, query or path gets a JSON answer
 * that is a success or a 4xx problem naming what was wrong, never a 500.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { memoryAuditLog, silentLogger } from '../../src/log/index.js';
import { createHttpApi, type HttpApi } from '../../src/server/http/index.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import { TrustBundle } from '../../src/spiffe/bundle.js';
import { td } from './helpers.js';

let dir: string;
let store: SqliteDatastore;
let api: HttpApi;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keel-http-fuzz-'));
  store = SqliteDatastore.open({ path: join(dir, 'k.db') });
  api = createHttpApi({ store, bundles: { bundle: () => TrustBundle.create({ trustDomain: td }) }, trustDomain: td, audit: memoryAuditLog(), logger: silentLogger });
});
afterAll(async () => {
  await api.close();
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

function checkAnswer(r: { statusCode: number; headers: Record<string, unknown>; body: string }): void {
  expect(r.statusCode).toBeLessThan(500);
  const doc = JSON.parse(r.body);
  if (r.statusCode >= 400) {
    expect(String(r.headers['content-type'])).toMatch(/^application\/problem\+json/);
    expect(doc.status).toBe(r.statusCode);
    expect(typeof doc.type).toBe('string');
    expect(typeof doc.detail).toBe('string');
    for (const e of doc.errors ?? []) {
      expect(typeof e.path).toBe('string');
      expect(typeof e.message).toBe('string');
    }
  }
}

const selectorLike = fc.oneof(fc.string(), fc.constantFrom('unix:uid:1000', 'tpm:policy:x', ':', 'a:', 'UP:x'));
const idLike = fc.oneof(fc.string(), fc.constantFrom('spiffe://example.org/a', 'spiffe://example.org', 'spiffe://Example.org/a', 'spiffe://example.org/keel/server', 'spiffe://other.org/x'));
const entryLike = fc.record(
  {
    spiffeId: idLike,
    parentId: idLike,
    selectors: fc.oneof(fc.array(selectorLike, { maxLength: 4 }), fc.anything()),
    x509SvidTtl: fc.oneof(fc.integer(), fc.double(), fc.constant(null), fc.string()),
    dnsNames: fc.array(fc.string(), { maxLength: 3 }),
    federatesWith: fc.array(fc.oneof(fc.string(), fc.constantFrom('other.org', 'example.org')), { maxLength: 3 }),
    admin: fc.anything(),
    hint: fc.oneof(fc.string(), fc.integer()),
    expiresAt: fc.oneof(fc.string(), fc.constant('2030-01-01T00:00:00Z')),
  },
  { requiredKeys: [] },
);

describe('admin API input', () => {
  it('answers any create body with a success or a problem', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(entryLike, fc.jsonValue()), async (body) => {
        const r = await api.admin.inject({ method: 'POST', url: '/v1/entries', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(body) });
        checkAnswer(r);
      }),
      { numRuns: 300 },
    );
  });

  it('answers any raw body bytes (truncated, garbage, oversized) with a problem', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string(), fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b).toString('latin1'))), async (payload) => {
        const r = await api.admin.inject({ method: 'POST', url: '/v1/entries/batch', headers: { 'content-type': 'application/json' }, payload });
        checkAnswer(r);
      }),
      { numRuns: 200 },
    );
    const big = await api.admin.inject({ method: 'POST', url: '/v1/entries', headers: { 'content-type': 'application/json' }, payload: `{"hint":"${'x'.repeat(2 * 1024 * 1024)}"}` });
    expect(big.statusCode).toBe(413);
    checkAnswer(big);
  });

  it('answers any query string and path parameter with a success or a problem', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.dictionary(fc.constantFrom('parentId', 'spiffeId', 'selector', 'selectorMatch', 'federatesWith', 'limit', 'cursor', 'downstream', 'other'), fc.oneof(fc.string(), fc.array(fc.string(), { maxLength: 3 }))),
        fc.string(),
        async (query, segment) => {
          const qs = new URLSearchParams();
          for (const [k, v] of Object.entries(query)) for (const x of [v].flat()) qs.append(k, x);
          checkAnswer(await api.admin.inject({ method: 'GET', url: `/v1/entries?${qs}` }));
          checkAnswer(await api.admin.inject({ method: 'GET', url: `/v1/agents/${encodeURIComponent(segment)}` }));
          checkAnswer(await api.admin.inject({ method: 'GET', url: `/v1/entries/${encodeURIComponent(segment)}` }));
        },
      ),
      { numRuns: 200 },
    );
  });
});
