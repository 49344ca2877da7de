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

/** Retries of a failed renewal come at most this far apart, and at least this far. */
export const RENEWAL_RETRY_MAX_MS = 5000;
export const RENEWAL_RETRY_MIN_MS = 100;
/** One signing call is waited for at most this long (and at least the minimum) before it counts as failed. */
export const RENEWAL_ATTEMPT_MAX_MS = 30_000;
export const RENEWAL_ATTEMPT_MIN_MS = 1000;

const clamp = (v: number, lo: number, hi: number): number => Math.min(hi, Math.max(lo, v));

/**
 * The longest wait between two attempts at renewing a credential whose life
 * (reception to expiry) is `lifeMs`: a twentieth of it, within 100 ms .. 5 s.
 *
 * Why that is enough: renewal starts at half-life at the latest
 * (renewalTime), so a fault that lasts less than a quarter of the life is
 * over by three quarters of it, and the next attempt comes within another
 * twentieth (plus, for a call that hangs, renewalAttemptTimeout): the
 * credential is replaced with about a tenth of its life to spare, and the old
 * one is served until then.
 */
export function renewalRetryCap(lifeMs: number): number {
  return clamp(lifeMs / 20, RENEWAL_RETRY_MIN_MS, RENEWAL_RETRY_MAX_MS);
}

/**
 * How long a signing call for credentials of life `lifeMs` is waited for
 * before it counts as failed and is retried (a server that hangs rather than
 * refuses): a tenth of the life, within 1 s .. 30 s. An answer that comes
 * later is still taken.
 */
export function renewalAttemptTimeout(lifeMs: number): number {
  return clamp(lifeMs / 10, RENEWAL_ATTEMPT_MIN_MS, RENEWAL_ATTEMPT_MAX_MS);
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
