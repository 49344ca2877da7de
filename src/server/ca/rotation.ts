/**
 * The rotation schedule, as SPIFFE servers run it, as a pure function of the
 * key states and the time: with an active key of lifetime L, prepare (and
 * publish) the next key when `prepareAt`·L remains, activate it when
 * `activateAt`·L remains, and drop an old key once every SVID it signed has
 * expired. The CA executes the steps; this module decides them.
 */
import type { AuthorityState } from './journal.js';

export interface RotationSchedule {
  /** Fraction of the active key's lifetime remaining when the next key is prepared (default 1/2). */
  readonly prepareAt: number;
  /** Fraction remaining when the prepared key becomes active (default 1/6). */
  readonly activateAt: number;
}

export const DEFAULT_SCHEDULE: RotationSchedule = { prepareAt: 1 / 2, activateAt: 1 / 6 };

export interface AuthoritySlot {
  readonly index: number;
  readonly state: AuthorityState;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
  /** Latest notAfter of anything this key signed, or null. */
  readonly issuedUntilMs: number | null;
}

export type RotationStep =
  /** Make a new key and publish it as prepared. */
  | { readonly kind: 'prepare' }
  /** Prepared → active; the previous active (if any) → old. */
  | { readonly kind: 'activate'; readonly index: number }
  /** Remove from the bundle and destroy the key. */
  | { readonly kind: 'drop'; readonly index: number; readonly why: string };

/**
 * The next step to take at `nowMs`, or undefined when the state is as it
 * should be. Call again after executing a step: one step at a time keeps each
 * one small enough to journal on its own.
 */
export function nextRotationStep(slots: readonly AuthoritySlot[], nowMs: number, s: RotationSchedule): RotationStep | undefined {
  for (const a of slots) {
    if (a.state === 'old') {
      if (a.issuedUntilMs === null || a.issuedUntilMs <= nowMs) return { kind: 'drop', index: a.index, why: 'every SVID it signed has expired' };
      if (a.notAfterMs <= nowMs) return { kind: 'drop', index: a.index, why: 'its certificate has expired' };
    }
    if (a.state === 'prepared' && a.notAfterMs <= nowMs) return { kind: 'drop', index: a.index, why: 'it expired before activation' };
  }
  const active = slots.find((a) => a.state === 'active');
  const prepared = slots.find((a) => a.state === 'prepared');
  if (!active || active.notAfterMs <= nowMs) {
    // First start, or the server was down past the active key's end.
    if (prepared) return { kind: 'activate', index: prepared.index };
    return { kind: 'prepare' };
  }
  const lifetime = active.notAfterMs - active.notBeforeMs;
  const remaining = active.notAfterMs - nowMs;
  if (!prepared) {
    if (remaining <= lifetime * s.prepareAt) return { kind: 'prepare' };
    return undefined;
  }
  if (remaining <= lifetime * s.activateAt) return { kind: 'activate', index: prepared.index };
  return undefined;
}

/** Time of the next scheduled step when nothing else happens, for timers. */
export function nextRotationTimeMs(slots: readonly AuthoritySlot[], s: RotationSchedule): number | undefined {
  const times: number[] = [];
  for (const a of slots) {
    if (a.state === 'old') times.push(Math.min(a.issuedUntilMs ?? a.notBeforeMs, a.notAfterMs));
    if (a.state === 'prepared') times.push(a.notAfterMs);
  }
  const active = slots.find((a) => a.state === 'active');
  if (active) {
    const lifetime = active.notAfterMs - active.notBeforeMs;
    const prepared = slots.some((a) => a.state === 'prepared');
    times.push(active.notAfterMs - lifetime * (prepared ? s.activateAt : s.prepareAt));
  }
  return times.length ? Math.min(...times) : undefined;
}
