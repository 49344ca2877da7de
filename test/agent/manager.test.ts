/**
 * The SVID manager's logic against a fake Node API (real certificates from
 * openssl, real JWTs): batching, rotation at half-life, entry removal,
 * the JWT cache, serving through a server outage, the agent SVID's expiry.
 */
import { createPublicKey, createPrivateKey, X509Certificate } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { JWT_FETCH_BUDGET_MS, SvidManager, SvidManagerError } from '../../src/agent/manager/index.js';
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

function setup(o: { maxBatch?: number; agentTtlMs?: number; random?: () => number; backoffRandom?: () => number } = {}): Harness {
  const node = new FakeNode();
  const logs: Harness['logs'] = [];
  const manager = new SvidManager({
    trustDomain: TrustDomain.parse(TD),
    node,
    logger: createLogger({ level: 'debug', write: (l) => logs.push(JSON.parse(l)) }),
    initialX509Bundle: node.x509BundleDer,
    agentSvidExpiresAt: new Date(Date.now() + (o.agentTtlMs ?? 48 * HOUR)),
    random: o.random ?? (() => 0.5),
    backoff: { random: o.backoffRandom ?? (() => 0.5) },
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
    // Retried with backoff for the fetch budget (10 s without a caller deadline), then refused.
    const pending = h.manager.fetchJwtSvid('a', ['x']).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(JWT_FETCH_BUDGET_MS);
    const err = await pending;
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

const serialsOf = (h: Harness, s: string[]): string[] => h.manager.identitiesFor(sel(...s)).map((i) => new X509Certificate(i.x509Svid.chainDer[0]!).serialNumber);

describe('make-before-break', () => {
  it("an entry's DNS names, then its TTL change: the old SVID is served at every moment until its replacement, and the serial changes once per change", async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    // What a stream would carry: the identities at every change notification.
    const seen: string[][] = [];
    h.manager.subscribe(() => seen.push(serialsOf(h, ['unix:uid:1'])));
    const s0 = serialsOf(h, ['unix:uid:1']);
    expect(s0).toHaveLength(1);

    h.node.entries = [entry('a', '/a', ['unix:uid:1'], { dns_names: ['a.example.org'] })];
    h.node.push();
    // Synchronously after the sync, before anything is signed: still the old one.
    expect(serialsOf(h, ['unix:uid:1'])).toEqual(s0);
    await settle();
    const s1 = serialsOf(h, ['unix:uid:1']);
    expect(s1).toHaveLength(1);
    expect(s1).not.toEqual(s0);
    expect(h.node.signBatches).toEqual([['a'], ['a']]);

    // The TTL changes while the server refuses to sign it: the old SVID stays for as long as that lasts.
    h.node.refuse.add('a');
    h.node.entries = [entry('a', '/a', ['unix:uid:1'], { dns_names: ['a.example.org'], x509_svid_ttl: 600 })];
    h.node.push();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(h.logs.some((l) => l.msg === 'the server refused an X.509-SVID')).toBe(true);
    expect(serialsOf(h, ['unix:uid:1'])).toEqual(s1);
    h.node.refuse.clear();
    await vi.advanceTimersByTimeAsync(6000);
    const s2 = serialsOf(h, ['unix:uid:1']);
    expect(s2).toHaveLength(1);
    expect(s2).not.toEqual(s1);

    expect(seen.length).toBeGreaterThan(0);
    for (const state of seen) expect(state).toHaveLength(1);
    // The states streams saw, repeats folded: the old SVID (the entry changed), its replacement, the next one; nothing between.
    const runs = seen.map((x) => x[0]!).filter((x, i, all) => i === 0 || all[i - 1] !== x);
    expect(runs).toEqual([s0[0], s1[0], s2[0]]);
    h.manager.stop();
  });

  it('a selector change re-matches without a new SVID; the SVID goes only with its entry', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1']), entry('b', '/b', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const before = serialsOf(h, ['unix:uid:1', 'unix:gid:5']);
    h.node.entries = [entry('a', '/a', ['unix:uid:1', 'unix:gid:5']), entry('b', '/b', ['unix:uid:1'])];
    h.node.push();
    await settle();
    expect(serialsOf(h, ['unix:uid:1', 'unix:gid:5'])).toEqual(before);
    expect(h.node.signBatches).toHaveLength(1);
    h.node.entries = [entry('b', '/b', ['unix:uid:1'])];
    h.node.push();
    expect(h.manager.identitiesFor(sel('unix:uid:1', 'unix:gid:5')).map((i) => i.entryId)).toEqual(['b']);
    h.manager.stop();
  });
});

describe('X.509 renewal through a server fault shorter than a quarter of the TTL', () => {
  const TTL = 60_000;
  const STEP = 100;
  // Fault windows of TTL/4 - 1 s starting before, at and after the renewal time (half-life: jitter is 0 here).
  const cases = (['error', 'hang'] as const).flatMap((fault) => [0.4, 0.5, 0.55].map((start) => [fault, start] as const));

  it.each(cases)('%s from %s of the life: an unexpired SVID is held at every step, and renewed after the fault', async (fault, start) => {
    const h = setup({ random: () => 0, backoffRandom: () => 0.999 });
    h.node.x509TtlMs = TTL;
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const t0 = Date.now();
    const first = h.manager.identitiesFor(sel('unix:uid:1'))[0]!.x509Svid;
    expect(first.expiresAt.getTime() - t0).toBeGreaterThan(TTL - 1000);
    // Measured on the SVID's actual life (its notAfter is whole seconds), so that 0.5 is its renewal time.
    const from = t0 + start * (first.expiresAt.getTime() - t0);
    const to = from + TTL / 4 - 1000;
    const absent: number[] = [];
    let callsInFault = 0;
    h.manager.subscribe(() => {
      if (h.manager.identitiesFor(sel('unix:uid:1')).length === 0) absent.push(Date.now() - t0);
    });
    while (Date.now() < t0 + 2.5 * TTL) {
      const now = Date.now();
      // A step that overlaps the window is faulty from its start: the window grows by < STEP, still under TTL/4.
      const inFault = now + STEP > from && now < to;
      h.node.x509Fault = inFault ? fault : undefined;
      const before = h.node.x509Calls;
      await vi.advanceTimersByTimeAsync(STEP);
      if (inFault) callsInFault += h.node.x509Calls - before;
      const held = h.manager.identitiesFor(sel('unix:uid:1'));
      if (held.length === 0 || held[0]!.x509Svid.expiresAt.getTime() <= Date.now()) absent.push(Date.now() - t0);
    }
    expect(absent).toEqual([]);
    // The fault was felt (the renewal fell in it, or came due during it) and retried, not waited out.
    if (start <= 0.5) expect(callsInFault).toBeGreaterThan(1);
    const last = h.manager.identitiesFor(sel('unix:uid:1'))[0]!.x509Svid;
    expect(last.expiresAt.getTime()).toBeGreaterThan(first.expiresAt.getTime() + TTL);
    h.manager.stop();
  }, 60_000);
});

describe('JWT-SVIDs for a new audience: deadline and retries', () => {
  it('during a short outage the fetch is retried with backoff and succeeds once the server is back, within the deadline', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    h.node.down = true;
    let settled = false;
    const p = h.manager.fetchJwtSvid('a', ['new-audience'], { deadline: Date.now() + 5000 }).finally(() => (settled = true));
    await vi.advanceTimersByTimeAsync(1500);
    expect(settled).toBe(false);
    const failedCalls = h.node.jwtCalls;
    expect(failedCalls).toBeGreaterThan(2);
    h.node.down = false;
    await vi.advanceTimersByTimeAsync(2100);
    expect(settled).toBe(true);
    const jwt = await p;
    expect((await h.manager.validateJwt(jwt.token, 'new-audience')).spiffeId.toString()).toBe(`spiffe://${TD}/a`);
    expect(h.node.jwtMints).toBe(1);
    h.manager.stop();
  });

  it('a server that stays away: refused server-unavailable before the caller deadline, after several attempts', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    h.node.down = true;
    const deadline = Date.now() + 3000;
    let settledAt: number | undefined;
    const p = h.manager.fetchJwtSvid('a', ['new-audience'], { deadline }).catch((e: unknown) => {
      settledAt = Date.now();
      return e;
    });
    await vi.advanceTimersByTimeAsync(3000);
    expect(settledAt).toBeDefined();
    expect(settledAt!).toBeLessThanOrEqual(deadline);
    expect(await p).toMatchObject({ name: 'SvidManagerError', reason: 'server-unavailable' });
    expect(h.node.jwtCalls).toBeGreaterThan(3);
    h.manager.stop();
  });

  it('a burst for 50 new audiences during an outage: one request at a time probes the server, and all succeed once it is back', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    h.node.down = true;
    const calls0 = h.node.jwtCalls;
    const burst = Array.from({ length: 50 }, (_, i) => h.manager.fetchJwtSvid('a', [`aud-${i}`], { deadline: Date.now() + 8000 }));
    await vi.advanceTimersByTimeAsync(4000);
    // Each request tried once, then single probes on the shared backoff; retried per request, it would be hundreds.
    const during = h.node.jwtCalls - calls0;
    expect(during).toBeGreaterThanOrEqual(50 + 3);
    expect(during).toBeLessThan(50 + 15);
    h.node.down = false;
    await vi.advanceTimersByTimeAsync(2500);
    const got = await Promise.all(burst);
    expect(new Set(got.map((g) => g.token)).size).toBe(50);
    expect(h.node.jwtMints).toBe(50);
    h.manager.stop();
  });

  it('an entry removed while the fetch is being retried: unknown-entry, not another retry', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    h.node.down = true;
    const p = h.manager.fetchJwtSvid('a', ['x'], { deadline: Date.now() + 5000 }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(300);
    h.node.entries = [];
    h.node.push();
    await vi.advanceTimersByTimeAsync(2000);
    expect(await p).toMatchObject({ reason: 'unknown-entry' });
    h.manager.stop();
  });
});

describe('lookup: what the agent can say about a caller', () => {
  it('before the first sync: unavailable; after it: matched or denied; while reconnecting: matched callers are served, others unavailable', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    expect(h.manager.lookup(sel('unix:uid:2'))).toMatchObject({ kind: 'unavailable' });
    h.manager.start();
    await settle();
    expect(h.manager.lookup(sel('unix:uid:1'))).toMatchObject({ kind: 'matched', entries: [{ entryId: 'a' }], identities: [{ entryId: 'a' }] });
    expect(h.manager.lookup(sel('unix:uid:2'))).toEqual({ kind: 'denied', detail: 'no registration entry matches the selectors' });

    // What the Workload API sees when it recomputes its (cached) answers on each change signal.
    const signalled: string[] = [];
    h.manager.subscribe(() => signalled.push(h.manager.lookup(sel('unix:uid:2')).kind));
    h.node.goDown();
    await settle();
    expect(h.manager.lookup(sel('unix:uid:1'))).toMatchObject({ kind: 'matched', identities: [{ entryId: 'a' }] });
    expect(h.manager.lookup(sel('unix:uid:2'))).toMatchObject({ kind: 'unavailable' });
    expect(signalled).toEqual(['unavailable']);
    h.node.down = false;
    await vi.advanceTimersByTimeAsync(1000);
    expect(h.node.openStreams).toBe(1);
    expect(h.manager.lookup(sel('unix:uid:2'))).toMatchObject({ kind: 'denied' });
    // The same snapshot as before the outage, yet a change is signalled: the standing changed.
    expect(signalled).toEqual(['unavailable', 'denied']);
    h.manager.stop();
  });

  it('a new entry whose SVID is not signed yet is matched without identities; the JWT-SVID is served anyway', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    h.node.x509Fault = 'error';
    h.node.entries = [entry('a', '/a', ['unix:uid:1']), entry('n', '/new', ['unix:uid:3'])];
    h.node.push();
    await settle();
    expect(h.manager.lookup(sel('unix:uid:3'))).toMatchObject({ kind: 'matched', entries: [{ entryId: 'n' }], identities: [] });
    expect((await h.manager.fetchJwtSvid('n', ['db'])).token.split('.')).toHaveLength(3);
    h.manager.stop();
  });

  it('revokeIdentity: denied for every caller and JWT-SVIDs refused identity-revoked, until a new agent SVID; then SVIDs are re-signed', async () => {
    const h = setup();
    h.node.entries = [entry('a', '/a', ['unix:uid:1'])];
    h.manager.start();
    await settle();
    const wit = await h.manager.fetchWitSvid('a');
    expect(h.node.witMints).toBe(1);
    h.manager.revokeIdentity('drifted');
    expect(h.manager.lookup(sel('unix:uid:1'))).toMatchObject({ kind: 'denied', detail: expect.stringContaining('drifted') });
    expect(h.manager.identitiesFor(sel('unix:uid:1'))).toEqual([]);
    await expect(h.manager.fetchJwtSvid('a', ['x'])).rejects.toMatchObject({ reason: 'identity-revoked' });
    h.node.x509Fault = 'error';
    h.manager.setAgentSvidExpiry(new Date(Date.now() + HOUR));
    await settle();
    // Re-attested, its SVID not yet signed again: matched (the caller should retry), not denied.
    expect(h.manager.lookup(sel('unix:uid:1'))).toMatchObject({ kind: 'matched', identities: [] });
    h.node.x509Fault = undefined;
    await vi.advanceTimersByTimeAsync(6000);
    expect(h.manager.lookup(sel('unix:uid:1'))).toMatchObject({ kind: 'matched', identities: [{ entryId: 'a' }] });
    // A WIT-SVID minted before the revocation is not served after it: a new one is minted.
    const after = await h.manager.fetchWitSvid('a');
    expect(h.node.witMints).toBe(2);
    expect(after.token).not.toBe(wit.token);
    h.manager.stop();
  });
});
