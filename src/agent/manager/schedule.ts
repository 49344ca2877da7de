/**
 * When SVIDs are renewed and JWT-SVIDs re-minted, and how work is batched.
 * Pure functions of times (ms since the epoch) and a random source.
 */

/** Up to this fraction of a lifetime is taken off the half-life, at random. */
export const RENEWAL_JITTER_FRACTION = 0.1;

/**
 * When to renew a credential received at `receivedAt` that expires at
 * `expiresAt`: at half of the remaining life, less a random share of up to a
 * tenth of it, so SVIDs issued in one batch do not all come due together.
 * Measured from reception rather than notBefore: the CA backdates notBefore
 * for clock skew, and the local clock is what the timers run on.
 */
export function renewalTime(receivedAt: number, expiresAt: number, random: () => number): number {
  const life = Math.max(0, expiresAt - receivedAt);
  const jitter = Math.min(Math.max(random(), 0), 1) * RENEWAL_JITTER_FRACTION * life;
  return receivedAt + life / 2 - jitter;
}

/** A JWT-SVID is served from the cache while more than half of its life is left. */
export function jwtIsFresh(receivedAt: number, expiresAt: number, now: number): boolean {
  const life = expiresAt - receivedAt;
  return life > 0 && expiresAt - now > life / 2;
}

/** `items` cut into consecutive batches of at most `max`. */
export function batches<T>(items: readonly T[], max: number): T[][] {
  if (!Number.isInteger(max) || max < 1) throw new RangeError('batch size must be a positive integer');
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += max) out.push(items.slice(i, i + max));
  return out;
}
