/**
 * Exponential backoff with jitter for reconnecting to the server. Half of each
 * delay is fixed and half random ("equal jitter"), so a fleet of agents that
 * lost the server at the same moment does not come back in lockstep, and no
 * agent retries much sooner than its schedule says.
 */
export interface BackoffOptions {
  /** First delay (default 500 ms). */
  readonly initialMs?: number;
  /** Longest delay (default 30 s). */
  readonly maxMs?: number;
  /** Growth per attempt (default 2). */
  readonly factor?: number;
  /** Uniform in [0, 1); Math.random by default. */
  readonly random?: () => number;
}

export class Backoff {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #factor: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(o: BackoffOptions = {}) {
    this.#initialMs = o.initialMs ?? 500;
    this.#maxMs = o.maxMs ?? 30_000;
    this.#factor = o.factor ?? 2;
    this.#random = o.random ?? Math.random;
    if (!(this.#initialMs > 0) || !(this.#maxMs >= this.#initialMs) || !(this.#factor >= 1)) {
      throw new RangeError('backoff needs 0 < initialMs <= maxMs and factor >= 1');
    }
  }

  /** Failures since the last reset. */
  get attempts(): number {
    return this.#attempt;
  }

  /** The delay before the next attempt, in ms; each call counts one failure. */
  next(): number {
    // The exponent is bounded so that the power never overflows to Infinity.
    const ceiling = Math.min(this.#maxMs, this.#initialMs * this.#factor ** Math.min(this.#attempt, 64));
    this.#attempt++;
    return Math.round(ceiling / 2 + this.#random() * (ceiling / 2));
  }

  reset(): void {
    this.#attempt = 0;
  }
}

/** `1.5s`, `250ms`: how delays appear in log lines. */
export function formatDelay(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.round(ms)}ms`;
}
