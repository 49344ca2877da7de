/**
 * Bounds on what callers can make the agent hold: connections per uid and in
 * total, streams per uid. Without them one uid with no entry at all held
 * 18,000 idle connections and ~530 MB of agent memory (issue 9).
 *
 * uid 0 is held to the per-uid limit only, not to the total: a flood from
 * other uids, even from many of them, cannot lock root's workloads out, and
 * one uid can never take more than its share of the total.
 */

export interface WorkloadApiLimits {
  /** Connections of all uids but 0 together. */
  readonly maxConnections: number;
  readonly maxConnectionsPerUid: number;
  /** Open FetchX509SVID / FetchX509Bundles / FetchJWTBundles streams per uid. */
  readonly maxStreamsPerUid: number;
  /** A connection with no call this long after accept is closed. */
  readonly firstCallTimeoutMs: number;
}

export const DEFAULT_LIMITS: WorkloadApiLimits = {
  maxConnections: 4096,
  maxConnectionsPerUid: 256,
  maxStreamsPerUid: 1024,
  firstCallTimeoutMs: 10_000,
};

/**
 * Connections over a limit are not dropped at once: they are kept this long
 * and every call on them is answered RESOURCE_EXHAUSTED, so a well-behaved
 * client learns why. At most REFUSING_MAX of them are kept at a time; beyond
 * that, under a flood, they are closed at accept.
 */
export const REFUSING_GRACE_MS = 1000;
export const REFUSING_MAX = 64;

/** Counts per uid; a uid's entry goes when its count reaches 0, so the map shrinks back after a flood. */
export class UidCounts {
  readonly #by = new Map<number, number>();
  #total = 0;

  of(uid: number): number {
    return this.#by.get(uid) ?? 0;
  }

  get total(): number {
    return this.#total;
  }

  /** How many uids hold at least one (for tests: returns to 0). */
  get uids(): number {
    return this.#by.size;
  }

  add(uid: number): void {
    this.#by.set(uid, this.of(uid) + 1);
    this.#total++;
  }

  remove(uid: number): void {
    const n = this.of(uid) - 1;
    if (n <= 0) this.#by.delete(uid);
    else this.#by.set(uid, n);
    this.#total--;
  }
}

/** Why a new connection of `uid` is over a limit, or undefined when it may be served. */
export function connectionOverLimit(limits: WorkloadApiLimits, counts: UidCounts, uid: number): string | undefined {
  if (counts.of(uid) >= limits.maxConnectionsPerUid) return `uid ${uid} already holds ${limits.maxConnectionsPerUid} connections (the per-uid limit)`;
  if (uid !== 0 && counts.total - counts.of(0) >= limits.maxConnections) return `the agent already holds ${limits.maxConnections} connections (the total limit)`;
  return undefined;
}

/**
 * One audit line per uid per window for connections closed at accept, with
 * how many there were: a flood must not turn into a flood of log lines.
 */
export class DropTally {
  readonly #by = new Map<number, { since: number; dropped: number }>();

  constructor(readonly windowMs = 10_000) {}

  /** Counts a drop; returns the count to report when a line is due now. */
  drop(uid: number, now = Date.now()): number | undefined {
    const t = this.#by.get(uid);
    if (t === undefined || now - t.since >= this.windowMs) {
      const dropped = (t?.dropped ?? 0) + 1;
      this.#by.set(uid, { since: now, dropped: 0 });
      this.#prune(now);
      return dropped;
    }
    t.dropped++;
    return undefined;
  }

  #prune(now: number): void {
    if (this.#by.size < 1024) return;
    for (const [uid, t] of this.#by) if (now - t.since >= this.windowMs && t.dropped === 0) this.#by.delete(uid);
  }
}
