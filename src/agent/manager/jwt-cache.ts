/**
 * JWT-SVIDs the agent has minted, per (SPIFFE ID, audience set). A token is
 * handed out again while more than half of its life is left; an older one
 * that has not expired is kept as a fallback for when the server cannot be
 * reached.
 */
import { jwtIsFresh } from './schedule.js';

export interface CachedJwtSvid {
  readonly token: string;
  /** When the agent received it (local clock, ms). */
  readonly receivedAt: number;
  readonly expiresAt: number;
}

/** The cache key: the audience is a set, so its order does not matter. */
export function jwtCacheKey(spiffeId: string, audience: readonly string[]): string {
  return JSON.stringify([spiffeId, [...new Set(audience)].sort()]);
}

export class JwtSvidCache {
  readonly #byKey = new Map<string, CachedJwtSvid & { readonly spiffeId: string }>();

  constructor(readonly maxEntries = 10_000) {
    if (!Number.isInteger(maxEntries) || maxEntries < 1) throw new RangeError('maxEntries must be a positive integer');
  }

  get size(): number {
    return this.#byKey.size;
  }

  /** A token with more than half of its life left. */
  fresh(spiffeId: string, audience: readonly string[], now: number): CachedJwtSvid | undefined {
    const hit = this.#byKey.get(jwtCacheKey(spiffeId, audience));
    return hit && jwtIsFresh(hit.receivedAt, hit.expiresAt, now) ? hit : undefined;
  }

  /** A token that has not expired yet (the fallback when no new one can be had). */
  unexpired(spiffeId: string, audience: readonly string[], now: number): CachedJwtSvid | undefined {
    const hit = this.#byKey.get(jwtCacheKey(spiffeId, audience));
    return hit && hit.expiresAt > now ? hit : undefined;
  }

  put(spiffeId: string, audience: readonly string[], jwt: CachedJwtSvid, now: number): void {
    const key = jwtCacheKey(spiffeId, audience);
    this.#byKey.delete(key);
    if (this.#byKey.size >= this.maxEntries) this.prune(now);
    // Still full of live tokens: forget the oldest inserted; it is only a cache.
    while (this.#byKey.size >= this.maxEntries) this.#byKey.delete(this.#byKey.keys().next().value!);
    this.#byKey.set(key, { ...jwt, spiffeId });
  }

  /** Forgets every token of `spiffeId` (its entry is gone). */
  dropSpiffeId(spiffeId: string): void {
    for (const [k, v] of this.#byKey) if (v.spiffeId === spiffeId) this.#byKey.delete(k);
  }

  /** Removes expired tokens. */
  prune(now: number): void {
    for (const [k, v] of this.#byKey) if (v.expiresAt <= now) this.#byKey.delete(k);
  }

  clear(): void {
    this.#byKey.clear();
  }
}
