/** The agent's WIT-SVID cache (src/agent/manager/wit-svids.ts): pure logic with a fake clock and a fake signer. */
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { WitSvidCache, type SignWit } from '../../src/agent/manager/wit-svids.js';
import { checkCnfJwk } from '../../src/spiffe/index.js';

function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

describe('WitSvidCache', () => {
  it('a new key pair per token (public half to the server with alg, private half to the workload), reused until half its life', async () => {
    const c = clock();
    const asked: string[] = [];
    let n = 0;
    const sign: SignWit = async (entryId, jwk) => {
      asked.push(jwk);
      return { token: `${entryId}-${++n}`, expiresAt: new Date(c.now() + 100_000) };
    };
    const cache = new WitSvidCache(c.now);
    const a = await cache.fetch('e1', 'spiffe://example.org/a', sign);
    const pub = checkCnfJwk(JSON.parse(asked[0]!));
    expect(pub.jwk.alg).toBe('ES256');
    const priv = createPrivateKey({ key: JSON.parse(a.privateKeyJwk), format: 'jwk' });
    expect(createPublicKey(priv).export({ format: 'jwk' })).toMatchObject({ x: pub.jwk.x, y: pub.jwk.y });
    c.advance(49_000);
    expect((await cache.fetch('e1', 'spiffe://example.org/a', sign)).token).toBe('e1-1');
    c.advance(2_000);
    const b = await cache.fetch('e1', 'spiffe://example.org/a', sign);
    expect(b.token).toBe('e1-2');
    expect(b.privateKeyJwk).not.toBe(a.privateKeyJwk);
    expect(asked[1]).not.toBe(asked[0]);
    // A changed SPIFFE ID of the entry is another token.
    expect((await cache.fetch('e1', 'spiffe://example.org/renamed', sign)).token).toBe('e1-3');
  });

  it('concurrent requests share one call; a failure serves the unexpired token, and fails once it has expired', async () => {
    const c = clock();
    let calls = 0;
    let fail = false;
    const sign: SignWit = async (entryId) => {
      calls++;
      await new Promise((r) => setTimeout(r, 20));
      if (fail) throw new Error('server unavailable');
      return { token: `${entryId}-${calls}`, expiresAt: new Date(c.now() + 10_000) };
    };
    const cache = new WitSvidCache(c.now);
    const [x, y] = await Promise.all([cache.fetch('e', 'spiffe://example.org/a', sign), cache.fetch('e', 'spiffe://example.org/a', sign)]);
    expect(calls).toBe(1);
    expect(x.token).toBe(y.token);
    fail = true;
    c.advance(6_000);
    expect((await cache.fetch('e', 'spiffe://example.org/a', sign)).token).toBe('e-1');
    c.advance(5_000);
    await expect(cache.fetch('e', 'spiffe://example.org/a', sign)).rejects.toThrow(/server unavailable/);
    cache.retain(new Set());
    expect(cache.size).toBe(0);
  });
});
