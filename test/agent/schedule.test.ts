/** The manager's pure timing rules: backoff, renewal at half-life, JWT freshness, batching, the JWT cache. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Backoff, batches, JwtSvidCache, jwtCacheKey, jwtIsFresh, renewalAttemptTimeout, renewalRetryCap, renewalTime, RENEWAL_JITTER_FRACTION } from '../../src/agent/manager/index.js';

describe('Backoff', () => {
  it('doubles from 500 ms up to the 30 s cap, each delay between half and all of its step', () => {
    const lo = new Backoff({ random: () => 0 });
    const hi = new Backoff({ random: () => 0.999999 });
    const los = Array.from({ length: 10 }, () => lo.next());
    const his = Array.from({ length: 10 }, () => hi.next());
    expect(los).toEqual([250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000]);
    expect(his).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
    expect(lo.attempts).toBe(10);
    lo.reset();
    expect(lo.attempts).toBe(0);
    expect(lo.next()).toBe(250);
  });

  it('never exceeds the cap nor goes below half the first step, however many failures', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5000 }), fc.double({ min: 0, max: 0.9999, noNaN: true }), (n, r) => {
        const b = new Backoff({ random: () => r });
        let last = 0;
        for (let i = 0; i < n; i++) last = b.next();
        return last <= 30_000 && last >= 250;
      }),
      { numRuns: 200 },
    );
  });

  it('refuses nonsense settings', () => {
    expect(() => new Backoff({ initialMs: 0 })).toThrow(RangeError);
    expect(() => new Backoff({ initialMs: 10, maxMs: 5 })).toThrow(RangeError);
  });
});

describe('renewal schedule', () => {
  it('renews at half of the remaining life, less up to a tenth of it as jitter', () => {
    expect(renewalTime(0, 1000, () => 0)).toBe(500);
    expect(renewalTime(0, 1000, () => 1)).toBe(500 - 1000 * RENEWAL_JITTER_FRACTION);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2e12 }), fc.integer({ min: 1, max: 1e9 }), fc.double({ min: 0, max: 1, noNaN: true }), (t, life, r) => {
        const at = renewalTime(t, t + life, () => r);
        return at >= t + 0.4 * life - 1e-6 && at <= t + 0.5 * life + 1e-6;
      }),
    );
  });

  it('jitter spreads SVIDs issued together', () => {
    let seed = 1;
    const rnd = (): number => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    const times = new Set(Array.from({ length: 50 }, () => Math.round(renewalTime(0, 3_600_000, rnd))));
    expect(times.size).toBeGreaterThan(40);
  });

  it('a JWT-SVID is fresh while more than half of its life is left', () => {
    expect(jwtIsFresh(0, 1000, 0)).toBe(true);
    expect(jwtIsFresh(0, 1000, 499)).toBe(true);
    expect(jwtIsFresh(0, 1000, 500)).toBe(false);
    expect(jwtIsFresh(0, 1000, 2000)).toBe(false);
    expect(jwtIsFresh(1000, 1000, 0)).toBe(false);
  });

  it('batches cut in order, none larger than the limit', () => {
    expect(batches([1, 2, 3, 4, 5], 2)).toEqual([[1, 2], [3, 4], [5]]);
    expect(batches([], 3)).toEqual([]);
    expect(batches(Array.from({ length: 2500 }, (_, i) => i), 1000).map((b) => b.length)).toEqual([1000, 1000, 500]);
    expect(() => batches([1], 0)).toThrow(RangeError);
  });
});

describe('JwtSvidCache', () => {
  const id = 'spiffe://example.org/web';
  it('keys by SPIFFE ID and audience set, in any order', () => {
    expect(jwtCacheKey(id, ['b', 'a'])).toBe(jwtCacheKey(id, ['a', 'b', 'a']));
    expect(jwtCacheKey(id, ['a'])).not.toBe(jwtCacheKey(id, ['a', 'b']));
    expect(jwtCacheKey(id, ['a'])).not.toBe(jwtCacheKey('spiffe://example.org/db', ['a']));
  });

  it('serves a token while fresh, keeps it as a fallback until expiry', () => {
    const c = new JwtSvidCache();
    c.put(id, ['x', 'y'], { token: 't1', receivedAt: 1000, expiresAt: 11_000 }, 1000);
    expect(c.fresh(id, ['y', 'x'], 5000)?.token).toBe('t1');
    expect(c.fresh(id, ['x'], 5000)).toBeUndefined();
    expect(c.fresh(id, ['x', 'y'], 6000)).toBeUndefined();
    expect(c.unexpired(id, ['x', 'y'], 10_999)?.token).toBe('t1');
    expect(c.unexpired(id, ['x', 'y'], 11_000)).toBeUndefined();
  });

  it('forgets a SPIFFE ID, prunes expired tokens, and stays bounded', () => {
    const c = new JwtSvidCache(3);
    c.put(id, ['a'], { token: 'a', receivedAt: 0, expiresAt: 100 }, 0);
    c.put(id, ['b'], { token: 'b', receivedAt: 0, expiresAt: 1000 }, 0);
    c.put('spiffe://example.org/db', ['a'], { token: 'c', receivedAt: 0, expiresAt: 1000 }, 0);
    c.put('spiffe://example.org/x', ['a'], { token: 'd', receivedAt: 0, expiresAt: 1000 }, 200);
    expect(c.size).toBe(3);
    expect(c.unexpired(id, ['a'], 50)).toBeUndefined(); // pruned to make room
    c.put('spiffe://example.org/y', ['a'], { token: 'e', receivedAt: 0, expiresAt: 1000 }, 200);
    expect(c.size).toBe(3);
    c.dropSpiffeId('spiffe://example.org/y');
    expect(c.unexpired('spiffe://example.org/y', ['a'], 300)).toBeUndefined();
  });
});

describe('renewal retries against faults shorter than a quarter of the life', () => {
  it('renewal time + the fault + one retry gap + one hung attempt end before expiry, with a tenth of the life to spare (lives of 20 s to 30 days)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 20_000, max: 30 * 86_400_000 }), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (life, r, where) => {
        const renewAt = renewalTime(0, life, () => r);
        // The fault starts anywhere up to the renewal time and lasts just under a quarter of the life.
        const faultEnd = where * renewAt + life / 4;
        const latestSuccess = Math.max(renewAt, faultEnd) + renewalRetryCap(life) + renewalAttemptTimeout(life);
        expect(latestSuccess).toBeLessThanOrEqual(life * 0.9 + 1e-6);
      }),
    );
  });

  it('retry gaps are 100 ms to 5 s, attempt timeouts 1 s to 30 s', () => {
    expect([renewalRetryCap(0), renewalRetryCap(60_000), renewalRetryCap(86_400_000)]).toEqual([100, 3000, 5000]);
    expect([renewalAttemptTimeout(0), renewalAttemptTimeout(60_000), renewalAttemptTimeout(86_400_000)]).toEqual([1000, 6000, 30_000]);
  });
});
