/**
 * The SVID manager's logic against a fake Node API (real certificates from
 * openssl, real JWTs): batching, rotation at half-life, entry removal,
 * the JWT cache, serving through a server outage, the agent SVID's expiry.
 */
import { createPublicKey, createPrivateKey, X509Certificate } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SvidManager, SvidManagerError } from '../../src/agent/manager/index.js';
import { createLogger } from '../../src/log/index.js';
import { bundleFromX509Der, JwtSvidError, verifyX509Svid } from '../../src/spiffe/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { entry, FakeNode, TD } from './fake-node.js';

const sel = (...s: string[]) => s.map((x) => ({ type: x.slice(0, x.indexOf(':')), value: x.slice(x.indexOf(':') + 1) }));
const HOUR = 3_600_000;

interface Harness {
  node: FakeNode;
  manager: SvidManager;
  logs: { level: string; msg: string; [k: string]: unknown }[];
  changes: () => number;
}

function setup(o: { maxBatch?: number; agentTtlMs?: number } = {}): Harness {
  const node = new FakeNode();
  const logs: Harness['logs'] = [];
  const manager = new SvidManager({
    trustDomain: TrustDomain.parse(TD),
    node,
    logger: createLogger({ level: 'debug', write: (l) => logs.push(JSON.parse(l)) }),
    initialX509Bundle: node.x509BundleDer,
    agentSvidExpiresAt: new Date(Date.now() + (o.agentTtlMs ?? 48 * HOUR)),
    random: () => 0.5,
    backoff: { random: () => 0.5 },
    ...(o.maxBatch ? { maxBatch: o.maxBatch } : {}),
  });
  let n = 0;
  manager.subscribe(() => n++);
  return { node, manager, logs, changes: () => n };
}

const settle = () => vi.advanceTimersByTimeAsync(0);

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] });
  // openssl stamps notBefore with the real clock, which keeps running while the fake one stands still:
  // start the fake clock a minute ahead so that a certificate signed during the test is already valid.
  vi.setSystemTime(Date.now() + 60_000);
});
afterEach(() => {
  vi.useRealTimers();
});

describe('X.509-SVIDs', () => {
  it('requests every due entry in one batch; each gets its own P-256 key; workloads get the entries their selectors cover', async () => {
    const h = setup();
    h.node.entries = [
      entry('e-web', '/web', ['unix:uid:1000'], { hint: 'web' }),
      entry('e-db', '/db', ['unix:uid:1000', 'unix:gid:50']),
      entry('e-other', '/other', ['unix:uid:2000']),
    ];
    h.manager.start();
    await settle();
    expect(h.node.signBatches).toEqual([['e-web', 'e-db', 'e-other']]);
    expect(h.changes()).toBeGreaterThan(0);

    expect(h.manager.identitiesFor(sel('unix:uid:1000')).map((i) => i.spiffeId.toString())).toEqual([`spiffe://${TD}/web`]);
    const both = h.manager.identitiesFor(sel('unix:uid:1000', 'unix:gid:50', 'unix:user:x'));
    expect(both.map((i) => i.entryId)).toEqual(['e-db', 'e-web']);
    expect(h.manager.identitiesFor(sel('unix:uid:3000'))).toEqual([]);

    const bundle = bundleFromX509Der(TD, h.node.x509BundleDer);
    const keys = new Set<string>();
    for (const i of both) {
      const chain = i.x509Svid.chainDer.map((d) => new X509Certificate(d));
      expect(verifyX509Svid(chain, bundle).id.equals(i.spiffeId)).toBe(true);
      const key = createPrivateKey({ key: i.x509Svid.privateKeyPkcs8, format: 'der', type: 'pkcs8' });
      expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect(chain[0]!.publicKey.equals(createPublicKey(key))).toBe(true);
      keys.add(i.x509Svid.privateKeyPkcs8.toString('hex'));
    }
    expect(keys.size).toBe(2);
    expect(h.manager.usesSelectorKind('unix:gid')).toBe(true);
    expect(h.manager.usesSelectorKind('unix:sha256')).toBe(false);
    h.manager.stop();
  });

  it('renews at half-life (less jitter) with fresh keys, all due entries in one call, and signals the change', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1']), entry('b', '/b', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const first = h.manager.identitiesFor(sel('unix:uid:1')).map((i) => i.x509Svid.privateKeyPkcs8.toString('hex'));
    const changesBefore = h.changes();
    // One-day SVIDs, jitter 0.5 × 10%: due at 12 h − 1.2 h = 10.8 h.
    await vi.advanceTimersByTimeAsync(10.5 * HOUR);
    expect(h.node.signBatches).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(0.4 * HOUR);
    expect(h.node.signBatches).toEqual([['a', 'b'], ['a', 'b']]);
    const second = h.manager.identitiesFor(sel('unix:uid:1')).map((i) => i.x509Svid.privateKeyPkcs8.toString('hex'));
    expect(second.every((k) => !first.includes(k))).toBe(true);
    expect(h.changes()).toBeGreaterThan(changesBefore);
    h.manager.stop();
  });

  it('cuts large sets into batches the server accepts', async () => {
    const h = setup({ maxBatch: 2 });
    h.node.entries = ['1', '2', '3', '4', '5'].map((n) => entry(`e${n}`, `/w${n}`, ['unix:uid:7']));
    h.manager.start();
    await settle();
    expect(h.node.signBatches.map((b) => b.length)).toEqual([2, 2, 1]);
    expect(h.manager.identitiesFor(sel('unix:uid:7'))).toHaveLength(5);
    h.manager.stop();
  });

  it('drops the SVID of a removed entry and replaces one whose SPIFFE ID changed, signalling each', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1']), entry('b', '/b', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    let n = h.changes();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.node.push();
    await settle();
    expect(h.changes()).toBeGreaterThan(n);
    expect(h.manager.identitiesFor(sel('unix:uid:1')).map((i) => i.entryId)).toEqual(['a']);
    expect(h.node.signBatches).toHaveLength(1);

    n = h.changes();
    h.node.entries = [entry('a', '/a2', ['unix:uid:1'])];
    h.node.push();
    await settle();
    expect(h.node.signBatches.at(-1)).toEqual(['a']);
    expect(h.manager.identitiesFor(sel('unix:uid:1')).map((i) => i.spiffeId.toString())).toEqual([`spiffe://${TD}/a2`]);
    expect(h.changes()).toBeGreaterThan(n);

    // A selector-only change re-matches without a new SVID.
    h.node.entries = [entry('a', '/a2', ['unix:uid:2'])];
    h.node.push();
    await settle();
    expect(h.node.signBatches).toHaveLength(2);
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toEqual([]);
    expect(h.manager.identitiesFor(sel('unix:uid:2'))).toHaveLength(1);
    h.manager.stop();
  });

  it('keeps serving what it has when one entry is refused, and retries that one with backoff', async () => {
    const h = setup();
    h.node.entries = [entry('ok', '/ok', ['unix:uid:1']), entry('no', '/no', ['unix:uid:1'])];
    h.node.refuse.add('no');
    h.manager.start();
    await settle();
    expect(h.manager.identitiesFor(sel('unix:uid:1')).map((i) => i.entryId)).toEqual(['ok']);
    expect(h.logs.some((l) => l.msg === 'the server refused an X.509-SVID' && l.reason === 'not-authorized')).toBe(true);
    h.node.refuse.clear();
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.node.signBatches.at(-1)).toEqual(['no']);
    expect(h.manager.identitiesFor(sel('unix:uid:1')).map((i) => i.entryId)).toEqual(['no', 'ok']);
    h.manager.stop();
  });
});

describe('server outage', () => {
  it('serves the cached SVIDs, reconnects with growing delays, logs each attempt and the recovery', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    h.node.goDown();
    await settle();
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(60_000);
    const retries = h.logs.filter((l) => l.msg.startsWith('server unreachable, retrying in'));
    expect(retries.length).toBeGreaterThanOrEqual(5);
    const delays = retries.map((l) => Number(/in ([\d.]+)s|in (\d+)ms/.exec(l.msg)!.slice(1).find(Boolean)) * (l.msg.endsWith('ms') ? 1 : 1000));
    for (let i = 1; i < delays.length; i++) expect(delays[i]!).toBeGreaterThanOrEqual(delays[i - 1]!);
    expect(Math.max(...delays)).toBeLessThanOrEqual(30_000);
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toHaveLength(1);

    h.node.down = false;
    await vi.advanceTimersByTimeAsync(31_000);
    expect(h.logs.filter((l) => l.msg === 'reconnected to the server')).toHaveLength(1);
    expect(h.node.openStreams).toBe(1);
    h.manager.stop();
  });

  it('renewal that cannot reach the server is retried while the old SVIDs keep being served', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const before = h.manager.identitiesFor(sel('unix:uid:1'))[0]!.x509Svid;
    h.node.down = true;
    await vi.advanceTimersByTimeAsync(11 * HOUR);
    expect(h.logs.some((l) => l.msg === 'requesting X.509-SVIDs failed' && l.reason === 'transport')).toBe(true);
    expect(h.manager.identitiesFor(sel('unix:uid:1'))[0]!.x509Svid).toBe(before);
    h.node.down = false;
    await vi.advanceTimersByTimeAsync(31_000);
    expect(h.manager.identitiesFor(sel('unix:uid:1'))[0]!.x509Svid).not.toBe(before);
    h.manager.stop();
  });
});

describe('the agent SVID', () => {
  it('after it expires nothing is served; once renewed, service resumes', async () => {
    const h = setup({ agentTtlMs: 60_000 });
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toHaveLength(1);
    const n = h.changes();
    await vi.advanceTimersByTimeAsync(61_000);
    expect(h.changes()).toBeGreaterThan(n);
    expect(h.manager.agentActive).toBe(false);
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toEqual([]);
    await expect(h.manager.fetchJwtSvid('a', ['x'])).rejects.toMatchObject({ name: 'SvidManagerError', reason: 'agent-svid-expired' });
    h.manager.setAgentSvidExpiry(new Date(Date.now() + HOUR));
    await settle();
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toHaveLength(1);
    h.manager.stop();
  });
});

describe('JWT-SVIDs', () => {
  it('caches per SPIFFE ID and audience set until half of the life is gone', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const t1 = await h.manager.fetchJwtSvid('a', ['x', 'y']);
    const t2 = await h.manager.fetchJwtSvid('a', ['y', 'x']);
    expect(t2.token).toBe(t1.token);
    expect(h.node.jwtMints).toBe(1);
    await h.manager.fetchJwtSvid('a', ['x']);
    expect(h.node.jwtMints).toBe(2);
    await vi.advanceTimersByTimeAsync(151_000);
    const t3 = await h.manager.fetchJwtSvid('a', ['x', 'y']);
    expect(t3.token).not.toBe(t1.token);
    expect(h.node.jwtMints).toBe(3);

    const v = await h.manager.validateJwt(t3.token, 'y');
    expect(v.spiffeId.toString()).toBe(`spiffe://${TD}/a`);
    expect(v.claims.aud).toEqual(['x', 'y']);
    await expect(h.manager.validateJwt(t3.token, 'z')).rejects.toBeInstanceOf(JwtSvidError);
    h.manager.stop();
  });

  it('concurrent requests share one mint; unknown entries are refused', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const [a, b] = await Promise.all([h.manager.fetchJwtSvid('a', ['x']), h.manager.fetchJwtSvid('a', ['x'])]);
    expect(a.token).toBe(b.token);
    expect(h.node.jwtMints).toBe(1);
    await expect(h.manager.fetchJwtSvid('nope', ['x'])).rejects.toMatchObject({ reason: 'unknown-entry' });
    h.manager.stop();
  });

  it('with the server down, a cached token is served until it expires, then the request fails', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const t = await h.manager.fetchJwtSvid('a', ['x']);
    h.node.down = true;
    await vi.advanceTimersByTimeAsync(200_000);
    expect((await h.manager.fetchJwtSvid('a', ['x'])).token).toBe(t.token);
    await vi.advanceTimersByTimeAsync(101_000);
    const err = await h.manager.fetchJwtSvid('a', ['x']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SvidManagerError);
    expect((err as SvidManagerError).reason).toBe('server-unavailable');
    h.manager.stop();
  });

  it('forgets the tokens of a removed entry', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    await h.manager.fetchJwtSvid('a', ['x']);
    expect(h.manager.stats.jwtCached).toBe(1);
    h.node.entries = [];
    h.node.push();
    await settle();
    expect(h.manager.stats.jwtCached).toBe(0);
    await expect(h.manager.fetchJwtSvid('a', ['x'])).rejects.toMatchObject({ reason: 'unknown-entry' });
    h.manager.stop();
  });
});
