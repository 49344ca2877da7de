/**
 * The rotation schedule, as SPIFFE servers run it, as a pure function of the
 * key states and the time: with an active key of lifetime L, prepare (and
 * publish) the next key when `prepareAt`·L remains, activate it when
 * `activateAt`·L remains — but only once it has been published for
 * `minPublishMs` — and drop an old key once every SVID it signed has expired.
 * The CA executes the steps; this module decides them.
 */
import type { AuthorityState } from './journal.js';

export interface RotationSchedule {
  /** Fraction of the active key's lifetime remaining when the next key is prepared (default 1/2). */
  readonly prepareAt: number;
  /** Fraction remaining when the prepared key becomes active (default 1/6). */
  readonly activateAt: number;
}

export const DEFAULT_SCHEDULE: RotationSchedule = { prepareAt: 1 / 2, activateAt: 1 / 6 };

/** What protects relying parties whose copy of the bundle, or whose clock, lags. */
export interface PublicationRules {
  /**
   * A prepared key signs nothing until it has been in the bundle this server
   * serves for at least this long; the old key goes on signing meanwhile,
   * for as long as it is valid at all.
   */
  readonly minPublishMs: number;
  /** An old key stays in the bundle this long past the last SVID it signed (verifiers whose clock is behind). */
  readonly dropGraceMs: number;
}

export const NO_PUBLICATION_RULES: PublicationRules = { minPublishMs: 0, dropGraceMs: 0 };

export interface AuthoritySlot {
  readonly index: number;
  readonly state: AuthorityState;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  /** Latest notAfter of anything this key signed, or null. */
  readonly issuedUntilMs: number | null;
  /** Prepared keys: since when this process has served the key in its bundle (default notBeforeMs). */
  readonly publishedSinceMs?: number;
}

export type RotationStep =
  /** Make a new key and publish it as prepared. */
  | { readonly kind: 'prepare' }
  /**
   * Prepared → active; the previous active (if any) → old. `underPublishedMs`
   * is set when the key was published for less than the minimum, which only
   * happens when nothing else can sign (the active key expired or there is none).
   */
  | { readonly kind: 'activate'; readonly index: number; readonly underPublishedMs?: number }
  /** Remove from the bundle and destroy the key. */
  | { readonly kind: 'drop'; readonly index: number; readonly why: string };

const publishedSince = (a: AuthoritySlot): number => a.publishedSinceMs ?? a.notBeforeMs;

/**
 * The next step to take at `nowMs`, or undefined when the state is as it
 * should be. Call again after executing a step: one step at a time keeps each
 * one small enough to journal on its own.
 */
export function nextRotationStep(
  slots: readonly AuthoritySlot[],
  nowMs: number,
  s: RotationSchedule,
  rules: PublicationRules = NO_PUBLICATION_RULES,
): RotationStep | undefined {
  for (const a of slots) {
    if (a.state === 'old') {
      if (a.issuedUntilMs === null || a.issuedUntilMs + rules.dropGraceMs <= nowMs) return { kind: 'drop', index: a.index, why: 'every SVID it signed has expired' };
      if (a.notAfterMs <= nowMs) return { kind: 'drop', index: a.index, why: 'its certificate has expired' };
    }
    if (a.state === 'prepared' && a.notAfterMs <= nowMs) return { kind: 'drop', index: a.index, why: 'it expired before activation' };
  }
  const active = slots.find((a) => a.state === 'active');
  const prepared = slots.find((a) => a.state === 'prepared');
  if (!active || active.notAfterMs <= nowMs) {
    // First start, or the server was down past the active key's end: nothing else can sign.
    if (!prepared) return { kind: 'prepare' };
    const shortBy = rules.minPublishMs - (nowMs - publishedSince(prepared));
    return shortBy > 0 && active ? { kind: 'activate', index: prepared.index, underPublishedMs: shortBy } : { kind: 'activate', index: prepared.index };
  }
  const lifetime = active.notAfterMs - active.notBeforeMs;
  const remaining = active.notAfterMs - nowMs;
  if (!prepared) {
    if (remaining <= lifetime * s.prepareAt) return { kind: 'prepare' };
    return undefined;
  }
  if (remaining > lifetime * s.activateAt) return undefined;
  // Due, but a key nobody may have fetched yet would lock out every relying party
  // that lacks it: the old key, which everyone has, signs on until it expires.
  if (nowMs - publishedSince(prepared) < rules.minPublishMs) return undefined;
  return { kind: 'activate', index: prepared.index };
}

/**
 * Activation is due by the schedule but held back because the prepared key
 * was not published long enough (a restart or an outage ate the time).
 * `fullTtl` says whether the old key can still sign SVIDs of the longest TTL
 * (false: they are being cut short at its end).
 */
export function deferredActivation(
  slots: readonly AuthoritySlot[],
  nowMs: number,
  s: RotationSchedule,
  rules: PublicationRules,
  maxSvidTtlMs: number,
): { readonly index: number; readonly publishedMs: number; readonly fullTtl: boolean } | undefined {
  const active = slots.find((a) => a.state === 'active');
  const prepared = slots.find((a) => a.state === 'prepared');
  if (!active || !prepared || active.notAfterMs <= nowMs) return undefined;
  const remaining = active.notAfterMs - nowMs;
  if (remaining > (active.notAfterMs - active.notBeforeMs) * s.activateAt) return undefined;
  const publishedMs = nowMs - publishedSince(prepared);
  if (publishedMs >= rules.minPublishMs) return undefined;
  return { index: prepared.index, publishedMs, fullTtl: remaining >= maxSvidTtlMs };
}

/** Time of the next scheduled step when nothing else happens, for timers. */
export function nextRotationTimeMs(slots: readonly AuthoritySlot[], s: RotationSchedule, rules: PublicationRules = NO_PUBLICATION_RULES): number | undefined {
  const times: number[] = [];
  for (const a of slots) {
    if (a.state === 'old') times.push(Math.min(a.issuedUntilMs === null ? a.notBeforeMs : a.issuedUntilMs + rules.dropGraceMs, a.notAfterMs));
    if (a.state === 'prepared') times.push(a.notAfterMs);
  }
  const active = slots.find((a) => a.state === 'active');
  if (active) {
    const lifetime = active.notAfterMs - active.notBeforeMs;
    const prepared = slots.find((a) => a.state === 'prepared');
    if (!prepared) times.push(active.notAfterMs - lifetime * s.prepareAt);
    else times.push(Math.min(active.notAfterMs, Math.max(active.notAfterMs - lifetime * s.activateAt, publishedSince(prepared) + rules.minPublishMs)));
  }
  return times.length ? Math.min(...times) : undefined;
}
