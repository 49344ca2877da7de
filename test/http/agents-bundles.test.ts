/** Agents (list, show, evict, ban, unban) and federated bundles over the admin socket. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { bundleFromJwks, bundleToJwksJson, TrustBundle } from '../../src/spiffe/bundle.js';
import { parseSelector } from '../../src/server/store/index.js';
import { makeTestPki, memorySigner, MutableBundle, startTestApi, td, testBundle, unixRequest, type RunningApi, type TestPki } from './helpers.js';

let pki: TestPki;
let api: RunningApi;
const call = (method: string, path: string, body?: unknown) => unixRequest(api.socket, method, path, body);
const agentId = (n: number) => td.child(`/keel/agent/tpm/${n.toString(16).padStart(64, '0')}`);
const enc = (n: number) => encodeURIComponent(agentId(n).toString());

beforeAll(async () => {
  pki = await makeTestPki();
  api = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [])), plaintext: true });
  for (const n of [1, 2, 3]) {
    await api.store.recordAttestation({
      agentId: agentId(n),
      ekPublicHash: n.toString(16).padStart(64, '0'),
      selectors: [parseSelector('tpm:policy:prod'), parseSelector(`tpm:ek-hash:${n}`)],
      svid: { serial: `0${n}`, notAfter: new Date(Date.now() + 3600_000) },
      quote: { clock: 1000n + BigInt(n), resetCount: 1, restartCount: 0 },
    });
  }
});
afterAll(async () => {
  await api?.stop();
  pki?.cleanup();
});

describe('agents', () => {
  it('lists and shows attested agents', async () => {
    const l = await call('GET', '/v1/agents');
    expect(l.status).toBe(200);
    expect(l.json().agents.map((a: { agentId: string }) => a.agentId)).toEqual([1, 2, 3].map((n) => agentId(n).toString()));
    const s = await call('GET', `/v1/agents/${enc(2)}`);
    expect(s.status).toBe(200);
    expect(s.json()).toMatchObject({
      agentId: agentId(2).toString(),
      attestationType: 'tpm',
      selectors: ['tpm:ek-hash:2', 'tpm:policy:prod'],
      status: { kind: 'active', svid: { serial: '02' } },
      lastQuote: { clock: '1002', resetCount: 1, restartCount: 0 },
    });
    expect((await call('GET', `/v1/agents/${enc(9)}`)).status).toBe(404);
    const bad = await call('GET', `/v1/agents/${encodeURIComponent('spiffe://other.org/a')}`);
    expect(bad.status).toBe(400);
    expect(bad.json().errors[0].path).toBe(':agentId');
  });

  it('evicts, bans with a reason, unbans, and filters by status', async () => {
    const ev = await call('POST', `/v1/agents/${enc(1)}/evict`);
    expect(ev.status).toBe(200);
    expect(ev.json().status.kind).toBe('evicted');

    const noReason = await call('POST', `/v1/agents/${enc(2)}/ban`, {});
    expect(noReason.status).toBe(400);
    expect(noReason.json().errors[0].path).toBe('/reason');

    const ban = await call('POST', `/v1/agents/${enc(2)}/ban`, { reason: 'stolen laptop' });
    expect(ban.status).toBe(200);
    expect(ban.json().status).toMatchObject({ kind: 'banned', reason: 'stolen laptop' });
    // A banned node cannot be evicted (it stays banned) and the store says so.
    expect((await call('POST', `/v1/agents/${enc(2)}/evict`)).status).toBe(409);

    const byStatus = async (s: string) => (await call('GET', `/v1/agents?status=${s}`)).json().agents.map((a: { agentId: string }) => a.agentId);
    expect(await byStatus('active')).toEqual([agentId(3).toString()]);
    expect(await byStatus('evicted')).toEqual([agentId(1).toString()]);
    expect(await byStatus('banned')).toEqual([agentId(2).toString()]);

    const unban = await call('POST', `/v1/agents/${enc(2)}/unban`);
    expect(unban.status).toBe(200);
    expect(unban.json().status.kind).toBe('evicted');
    expect((await call('POST', `/v1/agents/${enc(2)}/unban`)).status).toBe(409);

    // The store agrees, and the audit trail has each change.
    expect((await api.store.getNode(agentId(2)))?.status.kind).toBe('evicted');
    const actions = api.audit.events.flatMap((e) => (e.event === 'admin.change' && e.action.startsWith('agent.') ? [e.action] : []));
    expect(actions).toEqual(['agent.evict', 'agent.ban', 'agent.unban']);
  });
});

describe('bundles', () => {
  const other = () => {
    const signer = memorySigner('fed-1');
    return TrustBundle.create({ trustDomain: 'other.org', x509Authorities: [new X509Certificate(pki.webRoot.cert)], jwtAuthorities: [['fed-1', signer.publicKey]], sequence: 3, refreshHint: 120 });
  };

  it('shows the own bundle as the CA has it', async () => {
    const r = await call('GET', '/v1/bundle');
    expect(r.status).toBe(200);
    const b = bundleFromJwks(td, r.text);
    expect(b.x509Authorities[0]?.raw.equals(new X509Certificate(pki.spiffeCa.cert).raw)).toBe(true);
    expect(b.sequence).toBe(7n);
  });

  it('sets, lists, shows and deletes a federated bundle', async () => {
    const put = await call('PUT', '/v1/bundles/federated/other.org', bundleToJwksJson(other()));
    expect(put.status).toBe(200);
    const list = await call('GET', '/v1/bundles/federated');
    expect(list.json().bundles.map((b: { trustDomain: string; refreshHint: number }) => [b.trustDomain, b.refreshHint])).toEqual([['other.org', 120]]);
    const show = await call('GET', '/v1/bundles/federated/other.org');
    const read = bundleFromJwks('other.org', show.text);
    expect(read.jwtKeyIds).toEqual(['fed-1']);
    expect(read.x509Authorities).toHaveLength(1);

    // While an entry federates with it, it stays.
    const e = await call('POST', '/v1/entries', { spiffeId: 'spiffe://example.org/fed', parentId: agentId(3).toString(), selectors: ['unix:uid:1'], federatesWith: ['other.org'] });
    expect(e.status).toBe(201);
    expect((await call('DELETE', '/v1/bundles/federated/other.org')).status).toBe(409);
    await call('DELETE', `/v1/entries/${e.json().id}`);

    expect((await call('DELETE', '/v1/bundles/federated/other.org')).status).toBe(204);
    expect((await call('GET', '/v1/bundles/federated/other.org')).status).toBe(404);
    expect((await call('DELETE', '/v1/bundles/federated/other.org')).status).toBe(404);
  });

  it('refuses a bundle with duplicate members, a broken one, and the own trust domain', async () => {
    const dup = await call('PUT', '/v1/bundles/federated/dup.org', '{"keys":[],"keys":[]}');
    expect(dup.status).toBe(400);
    expect(dup.json().detail).toMatch(/duplicate|appears twice/i);
    const broken = await call('PUT', '/v1/bundles/federated/dup.org', { keys: [{ kty: 'EC', use: 'x509-svid', crv: 'P-256', x: 'AA', y: 'AA', x5c: ['bm90IGEgY2VydA=='] }] });
    expect(broken.status).toBe(400);
    expect(broken.json().type).toBe('urn:keel:problem:validation');
    const own = await call('PUT', '/v1/bundles/federated/example.org', bundleToJwksJson(other()));
    expect(own.status).toBe(400);
    expect((await call('GET', '/v1/bundles/federated/dup.org')).status).toBe(404);
  });
});
