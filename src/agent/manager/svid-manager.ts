/**
 * The agent's SVID cache: the entries the server authorizes (kept in sync over
 * SyncEntries), one EC P-256 key and X.509-SVID per entry (requested in
 * batches, renewed at half-life with jitter and retried every few seconds),
 * the trust bundles, and the JWT-SVIDs minted for workloads. It is what the
 * Workload API serves from (IdentitySource): answers come from memory, so they
 * keep coming while the server is unreachable, until the SVIDs or the agent's
 * own identity expire.
 *
 * Make-before-break: an SVID is replaced only by its successor. A change of
 * an entry's DNS names or TTL keeps the old SVID served until the new one is
 * signed; an SVID goes before its notAfter only with its entry (removed, or
 * its SPIFFE ID changed) or when the node loses its identity.
 */
import { X509Certificate, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { status as grpcStatus } from '@grpc/grpc-js';
import { buildCsr, NodeApiError, type WireEntry, type WireSyncEntries, type WireX509SvidResult } from '../attestation/index.js';
import { BundleSet, bundleFromX509Der, jwtBundleFromJson, validateJwtSvid, verifyX509Svid, type TrustBundle } from '../../spiffe/index.js';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import type { Logger } from '../../log/index.js';
import type {
  BundleSnapshot,
  FetchJwtOptions,
  Identity,
  IdentitySource,
  IssuedJwtSvid,
  IssuedWitSvid,
  MatchedEntry,
  TrustDomainBundle,
  Unsubscribe,
  ValidatedJwt,
  WorkloadLookup,
  X509SvidMaterial,
} from '../workload/identity-source.js';
import { formatSelector, kindOf, type Selector, type SelectorKind } from '../workload/selectors.js';
import { Backoff, formatDelay, type BackoffOptions } from './backoff.js';
import { SvidManagerError } from './errors.js';
import { JwtSvidCache } from './jwt-cache.js';
import { WitSvidCache } from './wit-svids.js';
import type { NodeApi } from './node-api.js';
import { batches, renewalAttemptTimeout, renewalRetryCap, renewalTime, RENEWAL_ATTEMPT_MAX_MS, RENEWAL_RETRY_MAX_MS } from './schedule.js';

/** The server's cap on one SignX509Svids call (src/server/node-api MAX_SVID_BATCH). */
export const DEFAULT_MAX_BATCH = 1000;
/** setTimeout's longest delay; later wake-ups are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** SVIDs due within min(5 s, 10% of their life) of a renewal that is running join it. */
const COALESCE_MAX_MS = 5000;
const COALESCE_FRACTION = 0.1;
const EMPTY_JWKS = Buffer.from('{"keys":[]}');
/** A JWT-SVID for an audience not cached is tried for this long when the caller set no (earlier) deadline. */
export const JWT_FETCH_BUDGET_MS = 10_000;
/** One SignJwtSvid call is waited for this long before another is tried. */
export const JWT_ATTEMPT_TIMEOUT_MS = 5000;
/** Stop retrying this long before the caller's deadline, so that the answer still reaches it. */
const JWT_DEADLINE_MARGIN_MS = 200;
/** Backoff between JWT-SVID attempts (equal jitter, so 50-100 ms, then 100-200 ms, … up to 1-2 s). */
const JWT_RETRY_BACKOFF = { initialMs: 100, maxMs: 2000 } as const;
const TIMED_OUT: unique symbol = Symbol('timed out');

export interface SvidManagerOptions {
  readonly trustDomain: TrustDomain;
  readonly node: NodeApi;
  readonly logger: Logger;
  /** The X.509 authorities (concatenated DER) learnt at attestation, served until the first sync. */
  readonly initialX509Bundle: Buffer;
  /** When the agent's own SVID expires; after it the manager serves nothing. */
  readonly agentSvidExpiresAt: Date;
  /** Reconnection and retry delays (retries of SVID renewals are also capped by schedule.ts renewalRetryCap). */
  readonly backoff?: BackoffOptions;
  /** JWT-SVID fetches for an uncached audience: total time without a caller deadline, and per attempt. */
  readonly jwtFetch?: { readonly budgetMs?: number; readonly attemptTimeoutMs?: number };
  readonly maxBatch?: number;
  /** ms since the epoch; Date.now by default. */
  readonly now?: () => number;
  /**
   * Clock skew tolerated when checking what the server signed (ms, default
   * 0; the agent passes agent.clock_skew_tolerance): an SVID whose notBefore
   * is a little ahead of this node's clock is still accepted and served.
   */
  readonly clockToleranceMs?: number;
  /** Uniform in [0, 1), for renewal jitter. */
  readonly random?: () => number;
  /** A workload key; EC P-256 by default. */
  readonly generateKey?: () => KeyObject;
  /** Called when the bundles change (the agent keeps a copy in data_dir). */
  readonly onBundles?: (bundles: BundleSnapshot) => void;
  /**
   * The server ended the sync stream because the agent's credential is dead
   * (evicted, banned, drifted, superseded): the agent must attest again.
   */
  readonly onIdentityLost?: (reason: string, detail: string) => void;
}

/** Sync refusals that mean the agent SVID no longer counts, not that the server is away. */
const IDENTITY_LOST_REASONS: ReadonlySet<string> = new Set(['not-active', 'superseded', 'unauthenticated', 'banned']);

interface ManagedEntry {
  readonly id: string;
  readonly spiffeId: SpiffeId;
  readonly selectorKeys: readonly string[];
  readonly kinds: readonly SelectorKind[];
  readonly hint: string;
  readonly federatesWith: readonly TrustDomain[];
  /** What the SVID certifies; when it changes the SVID is replaced at once. */
  readonly issueKey: string;
}

interface HeldSvid {
  readonly material: X509SvidMaterial;
  /** Local clock, ms: life = expiresAt - receivedAt. */
  readonly receivedAt: number;
  readonly renewAt: number;
  /** Renewed early by up to this much when another SVID's renewal comes first: one call instead of several. */
  readonly coalesceMs: number;
  readonly issueKey: string;
}

interface HeldBundle {
  readonly wire: TrustDomainBundle;
  readonly x509: TrustBundle | undefined;
  readonly jwt: TrustBundle | undefined;
}

function defaultKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
}

function parseSelectorText(text: string): Selector {
  const colon = text.indexOf(':');
  if (colon <= 0 || colon === text.length - 1) throw new Error(`selector ${JSON.stringify(text.slice(0, 80))} is not type:value`);
  return { type: text.slice(0, colon), value: text.slice(colon + 1) };
}

/** Stable order: equal states give byte-identical stream messages. */
function byIdentity(a: MatchedEntry, b: MatchedEntry): number {
  const x = a.spiffeId.toString();
  const y = b.spiffeId.toString();
  return x < y ? -1 : x > y ? 1 : a.entryId < b.entryId ? -1 : a.entryId > b.entryId ? 1 : 0;
}

/** Resolves when `p` settles (either way) or after `ms`, whichever is first; leaves no timer behind. */
function settledOrAfter(p: Promise<unknown> | undefined, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, Math.max(0, ms));
    const done = (): void => {
      clearTimeout(t);
      resolve();
    };
    p?.then(done, done);
  });
}

/** `p`, or a rejection with TIMED_OUT after `ms` (p itself goes on). */
function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(TIMED_OUT), Math.max(0, ms));
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

export class SvidManager implements IdentitySource {
  readonly #td: TrustDomain;
  readonly #node: NodeApi;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #generateKey: () => KeyObject;
  readonly #maxBatch: number;
  readonly #onBundles: ((b: BundleSnapshot) => void) | undefined;
  readonly #onIdentityLost: ((reason: string, detail: string) => void) | undefined;
  readonly #syncBackoff: Backoff;
  readonly #rotationBackoff: Backoff;
  readonly #jwtBudgetMs: number;
  readonly #jwtAttemptMs: number;
  readonly #clockToleranceMs: number;

  #entries = new Map<string, ManagedEntry>();
  #kinds = new Set<SelectorKind>();
  readonly #svids = new Map<string, HeldSvid>();
  #own: HeldBundle;
  #federated = new Map<string, HeldBundle>();
  #jwtBundles: BundleSet;
  readonly #jwtCache = new JwtSvidCache();
  /** WIT-SVIDs by entry; the tokens of entries no longer held go with the entries (#applyEntries). */
  readonly #wits = new WitSvidCache(() => this.#now());
  readonly #jwtInFlight = new Map<string, { readonly startedAt: number; readonly promise: Promise<IssuedJwtSvid> }>();
  /**
   * Set while SignJwtSvid calls fail: the next attempt (any audience) waits
   * for `nextAt`, and only one at a time probes the server, so a burst of
   * requests during an outage is not multiplied by its retries.
   */
  #jwtOutage: { readonly backoff: Backoff; nextAt: number; probe: Promise<unknown> | undefined } | undefined;
  readonly #listeners = new Set<() => void>();
  #agentExpiresAt: number;
  #revision = -1;
  #synced = false;
  /** A snapshot came on the sync stream that is open now: what the agent holds is what the server says. */
  #inSync = false;
  /** Why the node lost its identity (revokeIdentity), until it has a new one. */
  #revoked: string | undefined;
  readonly #syncWaiters = new Set<() => void>();

  #started = false;
  #stopped = false;
  #cancelSync: (() => void) | undefined;
  #syncDown = false;
  #syncTimer: NodeJS.Timeout | undefined;
  #rotationTimer: NodeJS.Timeout | undefined;
  #expiryTimer: NodeJS.Timeout | undefined;
  #rotating = false;
  #rotateAgain = false;

  constructor(o: SvidManagerOptions) {
    this.#td = o.trustDomain;
    this.#node = o.node;
    this.#log = o.logger;
    this.#now = o.now ?? Date.now;
    this.#random = o.random ?? Math.random;
    this.#generateKey = o.generateKey ?? defaultKey;
    this.#maxBatch = o.maxBatch ?? DEFAULT_MAX_BATCH;
    this.#onBundles = o.onBundles;
    this.#onIdentityLost = o.onIdentityLost;
    this.#syncBackoff = new Backoff(o.backoff);
    this.#rotationBackoff = new Backoff(o.backoff);
    this.#jwtBudgetMs = o.jwtFetch?.budgetMs ?? JWT_FETCH_BUDGET_MS;
    this.#jwtAttemptMs = o.jwtFetch?.attemptTimeoutMs ?? JWT_ATTEMPT_TIMEOUT_MS;
    this.#clockToleranceMs = o.clockToleranceMs ?? 0;
    this.#agentExpiresAt = o.agentSvidExpiresAt.getTime();
    const x509 = bundleFromX509Der(this.#td, o.initialX509Bundle);
    this.#own = { wire: { trustDomain: this.#td, x509Der: Buffer.from(o.initialX509Bundle), jwks: EMPTY_JWKS }, x509, jwt: undefined };
    this.#jwtBundles = BundleSet.of([]);
  }

  // ── lifecycle ───────────────────────────────────────────────────────────

  /** Opens the sync stream; SVIDs follow the first update. */
  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.#openSync();
    this.#scheduleExpiry();
  }

  /** Resolves after the first sync and the SVID round it starts, or after `timeoutMs`; true when synced. */
  async ready(timeoutMs: number): Promise<boolean> {
    if (!this.#synced) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(t);
          this.#syncWaiters.delete(done);
          resolve();
        };
        const t = setTimeout(done, timeoutMs);
        this.#syncWaiters.add(done);
      });
    }
    return this.#synced;
  }

  stop(): void {
    this.#stopped = true;
    this.#cancelSync?.();
    this.#cancelSync = undefined;
    this.#inSync = false;
    clearTimeout(this.#syncTimer);
    clearTimeout(this.#rotationTimer);
    clearTimeout(this.#expiryTimer);
    for (const w of [...this.#syncWaiters]) w();
  }

  /** The agent SVID was renewed (or re-attested): serve again until the new expiry. */
  setAgentSvidExpiry(expiresAt: Date): void {
    const wasActive = this.#agentActive();
    this.#agentExpiresAt = expiresAt.getTime();
    if (this.#agentActive()) this.#revoked = undefined;
    this.#scheduleExpiry();
    if (!wasActive && this.#agentActive()) {
      this.#emit();
      this.#requestRotation();
    }
  }

  get agentActive(): boolean {
    return this.#agentActive();
  }

  /**
   * The node lost its identity (out of policy, evicted, banned): every SVID
   * and cached JWT-SVID goes at once and nothing is served until
   * setAgentSvidExpiry() after a new attestation.
   */
  revokeIdentity(reason: string): void {
    const had = this.#svids.size;
    this.#agentExpiresAt = 0;
    this.#revoked = reason;
    this.#svids.clear();
    this.#jwtCache.clear();
    // Tokens minted before the revocation must not outlive it.
    this.#wits.retain(new Set());
    this.#log.error('the node lost its identity: every SVID is dropped until it attests again', { reason, dropped: had });
    this.#emit();
  }

  /** Store revision of the last sync (-1 before the first). */
  get revision(): number {
    return this.#revision;
  }

  /** Entries and SVIDs held, for status lines and tests. */
  get stats(): { readonly entries: number; readonly svids: number; readonly jwtCached: number } {
    return { entries: this.#entries.size, svids: this.#svids.size, jwtCached: this.#jwtCache.size };
  }

  #agentActive(): boolean {
    return this.#now() < this.#agentExpiresAt;
  }

  // ── sync ────────────────────────────────────────────────────────────────

  #openSync(): void {
    if (this.#stopped) return;
    let ended = false;
    this.#cancelSync = this.#node.syncEntries({
      onUpdate: (u) => {
        if (ended || this.#stopped) return;
        if (this.#syncDown) {
          this.#syncDown = false;
          this.#log.info('reconnected to the server', { attempts: this.#syncBackoff.attempts });
        }
        this.#syncBackoff.reset();
        // Before the change is signalled: answers computed for it know the agent is in sync.
        const wasInSync = this.#inSync;
        this.#inSync = true;
        this.#applySync(u, !wasInSync);
      },
      onEnd: (e) => {
        if (ended || this.#stopped) return;
        ended = true;
        this.#cancelSync = undefined;
        this.#inSync = false;
        // "No entry matches" can no longer be said: answers computed before are stale.
        this.#emit();
        if (IDENTITY_LOST_REASONS.has(e.reason)) this.#onIdentityLost?.(e.reason, e.detail);
        const delay = this.#syncBackoff.next();
        this.#syncDown = true;
        this.#log.warn(`server unreachable, retrying in ${formatDelay(delay)}`, {
          reason: e.reason,
          detail: e.detail,
          attempt: this.#syncBackoff.attempts,
          serving: this.#svids.size,
        });
        this.#syncTimer = setTimeout(() => this.#openSync(), delay);
      },
    });
  }

  /** Takes one SyncEntries snapshot: entries replaced, SVIDs of removed entries dropped, bundles updated. */
  applySync(u: WireSyncEntries): void {
    this.#applySync(u, false);
  }

  /** `standingChanged`: signal a change even when nothing in the snapshot differs (the agent just got in sync). */
  #applySync(u: WireSyncEntries, standingChanged: boolean): void {
    let changed = standingChanged;
    if (this.#applyBundles(u)) changed = true;
    if (this.#applyEntries(u.entries ?? [])) changed = true;
    this.#revision = Number(u.revision ?? this.#revision);
    if (changed) this.#emit();
    this.#requestRotation();
  }

  #applyEntries(wire: readonly WireEntry[]): boolean {
    const next = new Map<string, ManagedEntry>();
    for (const w of wire) {
      try {
        const spiffeId = SpiffeId.parse(w.spiffe_id);
        if (!spiffeId.memberOf(this.#td)) throw new Error(`${w.spiffe_id} is not in trust domain ${this.#td.name}`);
        const selectors = (w.selectors ?? []).map(parseSelectorText);
        if (selectors.length === 0) throw new Error('the entry has no selectors');
        const dns = [...(w.dns_names ?? [])].sort();
        next.set(w.id, {
          id: w.id,
          spiffeId,
          selectorKeys: [...new Set(selectors.map(formatSelector))],
          kinds: selectors.map(kindOf),
          hint: w.hint ?? '',
          federatesWith: (w.federates_with ?? []).map((t) => TrustDomain.parse(t)),
          issueKey: JSON.stringify([spiffeId.toString(), dns, w.x509_svid_ttl ?? 0]),
        });
      } catch (e) {
        this.#log.warn('ignoring an entry the agent cannot use', { entryId: w.id, err: e });
      }
    }
    let changed = next.size !== this.#entries.size;
    for (const [id, e] of next) {
      const old = this.#entries.get(id);
      if (!old || JSON.stringify(old) !== JSON.stringify(e)) changed = true;
    }
    for (const [id, old] of this.#entries) {
      const now = next.get(id);
      if (now && now.spiffeId.equals(old.spiffeId)) continue;
      // Removed, or it now grants another identity: the old one is no longer registered, so its
      // SVID and key go at once; its SPIFFE ID's JWTs too, unless another entry still grants that ID.
      this.#svids.delete(id);
      if (![...next.values()].some((e) => e.spiffeId.equals(old.spiffeId))) this.#jwtCache.dropSpiffeId(old.spiffeId.toString());
      this.#log.info(now ? "entry's SPIFFE ID changed: its old SVID is dropped" : 'entry removed: its SVID is dropped', { entryId: id, spiffeId: old.spiffeId.toString() });
    }
    // Any other change (DNS names, TTL) is make-before-break: the held SVID, still valid for the
    // entry's identity, stays served until #rotateOnce has its replacement (issueKey differs: due now).
    this.#entries = next;
    this.#wits.retain(new Set(next.keys()));
    this.#kinds = new Set([...next.values()].flatMap((e) => e.kinds));
    return changed;
  }

  #readBundle(td: TrustDomain, x509Der: Buffer | undefined, jwks: Buffer | undefined, previous: HeldBundle | undefined): HeldBundle | undefined {
    let x509 = previous?.x509;
    let jwt = previous?.jwt;
    let wireX509 = previous?.wire.x509Der ?? Buffer.alloc(0);
    let wireJwks = previous?.wire.jwks ?? EMPTY_JWKS;
    try {
      if (x509Der) {
        x509 = bundleFromX509Der(td, x509Der);
        // The agent's own trust domain always has a CA: an empty set is a server fault, not a revocation.
        if (td.equals(this.#td) && x509.x509Authorities.length === 0) throw new Error('the own trust domain bundle has no X.509 authority');
        wireX509 = Buffer.from(x509Der);
      }
      if (jwks) {
        jwt = jwtBundleFromJson(td, jwks);
        wireJwks = Buffer.from(jwks);
      }
    } catch (e) {
      this.#log.warn('ignoring a bundle the server sent', { trustDomain: td.name, err: e });
      return previous;
    }
    if (!x509 && !jwt) return undefined;
    return { wire: { trustDomain: td, x509Der: wireX509, jwks: wireJwks }, x509, jwt };
  }

  #applyBundles(u: WireSyncEntries): boolean {
    const before = this.#bundleFingerprint();
    const names = new Set([...Object.keys(u.x509_bundles ?? {}), ...Object.keys(u.jwt_bundles ?? {})]);
    const federated = new Map<string, HeldBundle>();
    for (const name of names) {
      let td: TrustDomain;
      try {
        td = TrustDomain.parse(name);
      } catch (e) {
        this.#log.warn('ignoring a bundle for an invalid trust domain', { trustDomain: name.slice(0, 100), err: e });
        continue;
      }
      const x509Der = u.x509_bundles?.[name];
      const jwks = u.jwt_bundles?.[name];
      if (td.equals(this.#td)) {
        this.#own = this.#readBundle(td, x509Der, jwks, this.#own) ?? this.#own;
      } else {
        const held = this.#readBundle(td, x509Der, jwks, this.#federated.get(td.name));
        if (held) federated.set(td.name, held);
      }
    }
    this.#federated = federated;
    this.#jwtBundles = BundleSet.of([this.#own, ...federated.values()].flatMap((b) => (b.jwt ? [b.jwt] : [])));
    const changed = this.#bundleFingerprint() !== before;
    if (changed) {
      try {
        this.#onBundles?.(this.bundles());
      } catch (e) {
        this.#log.warn('saving the bundles failed', { err: e });
      }
    }
    return changed;
  }

  #bundleFingerprint(): string {
    const parts = [this.#own, ...this.#federated.values()].map((b) => `${b.wire.trustDomain.name}|${b.wire.x509Der.toString('base64')}|${b.wire.jwks.toString('base64')}`);
    return parts.join('\n');
  }

  // ── X.509-SVIDs ─────────────────────────────────────────────────────────

  #requestRotation(): void {
    if (this.#stopped || !this.#started) return;
    if (this.#rotating) {
      this.#rotateAgain = true;
      return;
    }
    void this.#rotate();
  }

  async #rotate(): Promise<void> {
    this.#rotating = true;
    clearTimeout(this.#rotationTimer);
    let failed = false;
    try {
      do {
        this.#rotateAgain = false;
        failed = await this.#rotateOnce();
      } while (this.#rotateAgain && !this.#stopped);
    } catch (e) {
      failed = true;
      this.#log.error('SVID rotation failed', { err: e });
    } finally {
      this.#rotating = false;
    }
    if (!this.#synced && this.#revision >= 0) {
      this.#synced = true;
      for (const w of [...this.#syncWaiters]) w();
    }
    this.#scheduleRotation(failed);
  }

  /** Entries whose SVID is due now: none held, certifying something else (DNS names, TTL), or at its renewal time. */
  #due(now: number): ManagedEntry[] {
    return [...this.#entries.values()].filter((e) => {
      const held = this.#svids.get(e.id);
      return !held || held.issueKey !== e.issueKey || now >= held.renewAt - held.coalesceMs;
    });
  }

  /** The shortest life among the SVIDs held for `entries` (Infinity when none is held). */
  #shortestLife(entries: readonly ManagedEntry[]): number {
    let life = Infinity;
    for (const e of entries) {
      const held = this.#svids.get(e.id);
      if (held) life = Math.min(life, held.material.expiresAt.getTime() - held.receivedAt);
    }
    return life;
  }

  /** Requests SVIDs for every entry that is due; true when some could not be had. */
  async #rotateOnce(): Promise<boolean> {
    if (!this.#agentActive()) return false;
    const due = this.#due(this.#now());
    if (due.length === 0) return false;
    let failed = false;
    let changed = 0;
    for (const batch of batches(due, this.#maxBatch)) {
      if (this.#stopped) break;
      const prepared = batch.map((entry) => {
        const key = this.#generateKey();
        return { entry, key, csr: buildCsr(key) };
      });
      const life = this.#shortestLife(batch);
      const timeoutMs = life === Infinity ? RENEWAL_ATTEMPT_MAX_MS : renewalAttemptTimeout(life);
      const sentAt = this.#now();
      const call = this.#node.signX509Svids(prepared.map((p) => ({ entryId: p.entry.id, csr: p.csr })));
      let results: WireX509SvidResult[];
      try {
        results = await withTimeout(call, timeoutMs);
      } catch (e) {
        if (e === TIMED_OUT) {
          this.#log.warn(`requesting X.509-SVIDs: no answer within ${formatDelay(timeoutMs)}; retrying (a late answer is still used)`, { entries: batch.length });
          // A server that was only slow: what it signs is as good as a retry's answer.
          call.then(
            (late) => {
              if (this.#stopped) return;
              const n = this.#take(prepared, late, sentAt).changed;
              if (n > 0) this.#rotated(n);
            },
            () => undefined,
          );
        } else {
          const err = NodeApiError.from(e);
          this.#log.warn('requesting X.509-SVIDs failed', { reason: err.reason, detail: err.detail, entries: batch.length });
        }
        failed = true;
        break;
      }
      const r = this.#take(prepared, results, undefined);
      changed += r.changed;
      if (r.failed) failed = true;
    }
    if (changed > 0) this.#rotated(changed);
    return failed;
  }

  /**
   * Keeps the SVIDs of one signing answer that are still wanted. `lateSentAt`:
   * the answer came after its call was given up (sent then); it replaces
   * nothing received since, i.e. nothing a retry already brought.
   */
  #take(
    prepared: readonly { readonly entry: ManagedEntry; readonly key: KeyObject }[],
    results: readonly WireX509SvidResult[],
    lateSentAt: number | undefined,
  ): { changed: number; failed: boolean } {
    const late = lateSentAt !== undefined;
    const byId = new Map(results.map((r) => [r.entry_id, r]));
    let changed = 0;
    let failed = false;
    for (const p of prepared) {
      const current = this.#entries.get(p.entry.id);
      // Removed or changed while the call was out: the next round (already requested) deals with it.
      if (!current || current.issueKey !== p.entry.issueKey) continue;
      const r = byId.get(p.entry.id);
      if (!r || r.error) {
        if (!late) this.#log.warn('the server refused an X.509-SVID', { entryId: p.entry.id, spiffeId: p.entry.spiffeId.toString(), reason: r?.error || 'no result' });
        failed = true;
        continue;
      }
      try {
        const material = this.#accept(p.entry, p.key, r);
        const held = this.#svids.get(p.entry.id);
        if (late && held && held.issueKey === p.entry.issueKey && held.receivedAt >= lateSentAt) continue;
        const receivedAt = this.#now();
        this.#svids.set(p.entry.id, {
          material,
          receivedAt,
          issueKey: p.entry.issueKey,
          renewAt: renewalTime(receivedAt, material.expiresAt.getTime(), this.#random),
          coalesceMs: Math.min(COALESCE_MAX_MS, COALESCE_FRACTION * Math.max(0, material.expiresAt.getTime() - receivedAt)),
        });
        changed++;
      } catch (e) {
        this.#log.error('the server returned an X.509-SVID the agent cannot use', { entryId: p.entry.id, err: e });
        failed = true;
      }
    }
    return { changed, failed };
  }

  #rotated(count: number): void {
    this.#log.info('X.509-SVIDs rotated', { count, held: this.#svids.size });
    this.#scheduleExpiry();
    this.#emit();
  }

  /** Checks an issued SVID: it certifies our key and the entry's ID, and chains to the bundle. */
  #accept(entry: ManagedEntry, key: KeyObject, r: WireX509SvidResult): X509SvidMaterial {
    const chain = r.cert_chain.map((d) => new X509Certificate(d));
    const leaf = chain[0];
    if (!leaf) throw new Error('empty certificate chain');
    if (!leaf.publicKey.equals(createPublicKey(key))) throw new Error('the SVID does not certify the key of the CSR');
    const verified = verifyX509Svid(chain, this.#own.x509 ?? bundleFromX509Der(this.#td, this.#own.wire.x509Der), {
      now: new Date(this.#now()),
      clockToleranceMs: this.#clockToleranceMs,
    });
    if (!verified.id.equals(entry.spiffeId)) throw new Error(`the SVID names ${verified.id.toString()}, the entry ${entry.spiffeId.toString()}`);
    return {
      chainDer: r.cert_chain.map((d) => Buffer.from(d)),
      privateKeyPkcs8: key.export({ type: 'pkcs8', format: 'der' }),
      expiresAt: new Date(leaf.validTo),
    };
  }

  #scheduleRotation(failed: boolean): void {
    if (this.#stopped) return;
    clearTimeout(this.#rotationTimer);
    let delay: number;
    if (failed) {
      // Retries come every few seconds at most, and within a twentieth of the life of the SVIDs
      // waiting: a fault shorter than a quarter of their life never outlasts them (schedule.ts).
      const life = this.#shortestLife(this.#due(this.#now()));
      const cap = life === Infinity ? RENEWAL_RETRY_MAX_MS : renewalRetryCap(life);
      delay = Math.min(this.#rotationBackoff.next(), cap);
      this.#log.warn(`SVIDs not all renewed, retrying in ${formatDelay(delay)}`, { attempt: this.#rotationBackoff.attempts });
    } else {
      this.#rotationBackoff.reset();
      let next = Infinity;
      for (const id of this.#entries.keys()) next = Math.min(next, this.#svids.get(id)?.renewAt ?? Infinity);
      if (next === Infinity) return;
      delay = Math.max(0, next - this.#now());
    }
    this.#rotationTimer = setTimeout(() => this.#requestRotation(), Math.min(delay, MAX_TIMER_MS));
  }

  /** Wakes at the next expiry (an SVID's or the agent's) so that streams drop what is no longer valid. */
  #scheduleExpiry(): void {
    if (this.#stopped || !this.#started) return;
    clearTimeout(this.#expiryTimer);
    const now = this.#now();
    let next = this.#agentExpiresAt > now ? this.#agentExpiresAt : Infinity;
    for (const s of this.#svids.values()) {
      const t = s.material.expiresAt.getTime();
      if (t > now) next = Math.min(next, t);
    }
    if (next === Infinity) return;
    this.#expiryTimer = setTimeout(() => {
      const now2 = this.#now();
      if (now2 >= this.#agentExpiresAt && this.#agentExpiresAt > now) {
        this.#log.error('the agent SVID expired: serving no identities until the node is attested again');
      }
      for (const [id, s] of this.#svids) {
        if (s.material.expiresAt.getTime() <= now2) {
          this.#svids.delete(id);
          this.#log.warn('an X.509-SVID expired before it could be renewed', { entryId: id });
        }
      }
      this.#jwtCache.prune(now2);
      this.#emit();
      this.#scheduleExpiry();
    }, Math.min(Math.max(0, next - now) + 1, MAX_TIMER_MS));
  }

  // ── IdentitySource ──────────────────────────────────────────────────────

  identitiesFor(selectors: readonly Selector[]): readonly Identity[] {
    const l = this.lookup(selectors);
    return l.kind === 'matched' ? l.identities : [];
  }

  lookup(selectors: readonly Selector[]): WorkloadLookup {
    if (this.#stopped) return { kind: 'unavailable', detail: 'the agent is shutting down' };
    if (this.#revoked !== undefined) return { kind: 'denied', detail: `the node lost its identity (${this.#revoked}): no identity until it is attested again` };
    if (!this.#agentActive()) return { kind: 'unavailable', detail: "the agent's own SVID has expired; it is being renewed" };
    const have = new Set(selectors.map(formatSelector));
    const now = this.#now();
    const entries: MatchedEntry[] = [];
    const identities: Identity[] = [];
    for (const e of this.#entries.values()) {
      if (!e.selectorKeys.every((k) => have.has(k))) continue;
      const matched: MatchedEntry = { entryId: e.id, spiffeId: e.spiffeId, hint: e.hint, federatesWith: e.federatesWith };
      entries.push(matched);
      const held = this.#svids.get(e.id);
      if (held && held.material.expiresAt.getTime() > now) identities.push({ ...matched, x509Svid: held.material });
    }
    if (entries.length > 0) return { kind: 'matched', entries: entries.sort(byIdentity), identities: identities.sort(byIdentity) };
    // "No entry matches" is only said on what the server said since the stream (re)opened.
    if (!this.#inSync) {
      return {
        kind: 'unavailable',
        detail: this.#revision < 0 ? 'the agent has not received its entries from the server yet' : 'the agent is not in sync with the server (reconnecting)',
      };
    }
    return { kind: 'denied', detail: 'no registration entry matches the selectors' };
  }

  bundles(): BundleSnapshot {
    return {
      own: this.#own.wire,
      federated: [...this.#federated.values()].map((b) => b.wire).sort((a, b) => (a.trustDomain.name < b.trustDomain.name ? -1 : 1)),
    };
  }

  async fetchJwtSvid(entryId: string, audience: readonly string[], options: FetchJwtOptions = {}): Promise<IssuedJwtSvid> {
    let entry = this.#jwtEntry(entryId, audience);
    const id = entry.spiffeId.toString();
    const hit = this.#jwtCache.fresh(id, audience, this.#now());
    if (hit) return { token: hit.token, expiresAt: new Date(hit.expiresAt) };
    // Bounded by the caller's deadline (less a margin for the answer to reach it) and by the budget.
    const end = Math.min((options.deadline ?? Infinity) - JWT_DEADLINE_MARGIN_MS, this.#now() + this.#jwtBudgetMs);
    let last: NodeApiError | undefined;
    let attempts = 0;
    for (;;) {
      const left = end - this.#now();
      if (left <= 0) break;
      const outage = this.#jwtOutage;
      if (outage && (outage.probe || this.#now() < outage.nextAt)) {
        // The server is failing: one request at a time finds out whether it is back; the others wait for it.
        await settledOrAfter(outage.probe, outage.probe ? left : Math.min(outage.nextAt - this.#now(), left));
        // While waiting the entry may have gone, or the node lost its identity: say so rather than retry.
        entry = this.#jwtEntry(entryId, audience);
        const fresh = this.#jwtCache.fresh(id, audience, this.#now());
        if (fresh) return { token: fresh.token, expiresAt: new Date(fresh.expiresAt) };
        continue;
      }
      const attempt = this.#jwtAttempt(entry, audience);
      if (outage) outage.probe = attempt;
      attempts++;
      try {
        const jwt = await withTimeout(attempt, Math.min(left, this.#jwtAttemptMs));
        this.#jwtOutage = undefined;
        return jwt;
      } catch (e) {
        last = e === TIMED_OUT ? new NodeApiError('timeout', grpcStatus.DEADLINE_EXCEEDED, `no answer within ${formatDelay(Math.min(left, this.#jwtAttemptMs))}`) : NodeApiError.from(e);
        if (e instanceof SvidManagerError) throw e;
      }
      const o = (this.#jwtOutage ??= { backoff: new Backoff({ ...JWT_RETRY_BACKOFF, random: this.#random }), nextAt: 0, probe: undefined });
      if (o.probe === attempt) o.probe = undefined;
      // One step of backoff per wave of failures, not one per failed request.
      if (this.#now() >= o.nextAt) o.nextAt = this.#now() + o.backoff.next();
      // The server cannot be reached: a token that is still valid is better than none.
      const stale = this.#jwtCache.unexpired(id, audience, this.#now());
      if (stale) {
        this.#log.warn('minting a JWT-SVID failed; serving the cached one', { entryId: entry.id, reason: last.reason });
        return { token: stale.token, expiresAt: new Date(stale.expiresAt) };
      }
      entry = this.#jwtEntry(entryId, audience);
    }
    const why = last ? `${last.reason} (${last.detail})` : 'the server was failing and no retry fitted before the deadline';
    this.#log.warn('no JWT-SVID could be had', { entryId: entry.id, attempts, reason: last?.reason ?? 'deadline' });
    throw new SvidManagerError('server-unavailable', `no JWT-SVID for ${id}: ${why}`);
  }

  /** The entry a JWT-SVID is asked for, or the typed reason it cannot be had. */
  #jwtEntry(entryId: string, audience: readonly string[]): ManagedEntry {
    if (this.#stopped) throw new SvidManagerError('stopped', 'the agent is shutting down');
    if (this.#revoked !== undefined) throw new SvidManagerError('identity-revoked', `the node lost its identity (${this.#revoked})`);
    if (!this.#agentActive()) throw new SvidManagerError('agent-svid-expired', 'the agent has no valid SVID');
    const entry = this.#entries.get(entryId);
    if (!entry) throw new SvidManagerError('unknown-entry', `entry ${JSON.stringify(entryId)} is not held by this agent`);
    if (audience.length === 0) throw new SvidManagerError('unknown-entry', 'a JWT-SVID needs an audience');
    return entry;
  }

  /** One SignJwtSvid call, shared by concurrent requests for the same (SPIFFE ID, audience); a call older than the attempt timeout is not joined. */
  #jwtAttempt(entry: ManagedEntry, audience: readonly string[]): Promise<IssuedJwtSvid> {
    const id = entry.spiffeId.toString();
    const key = JSON.stringify([id, [...new Set(audience)].sort()]);
    const now = this.#now();
    const running = this.#jwtInFlight.get(key);
    if (running && now - running.startedAt < this.#jwtAttemptMs) return running.promise;
    const flight = {
      startedAt: now,
      promise: this.#node.signJwtSvid(entry.id, audience).then((jwt) => {
        this.#jwtCache.put(id, audience, { token: jwt.token, receivedAt: this.#now(), expiresAt: jwt.expiresAt.getTime() }, this.#now());
        return jwt;
      }),
    };
    const forget = (): void => {
      if (this.#jwtInFlight.get(key) === flight) this.#jwtInFlight.delete(key);
    };
    flight.promise.then(forget, forget);
    this.#jwtInFlight.set(key, flight);
    return flight.promise;
  }

  /** A WIT-SVID of the entry with a key pair made for it (wit-svids.ts): the same checks as for a JWT-SVID, cached per entry. */
  async fetchWitSvid(entryId: string): Promise<IssuedWitSvid> {
    const entry = this.#jwtEntry(entryId, ['wit-svid']);
    const node = this.#node;
    if (!node.signWitSvid) throw new SvidManagerError('server-unavailable', 'the Node API client cannot ask for WIT-SVIDs');
    try {
      return await this.#wits.fetch(entry.id, entry.spiffeId.toString(), (id, jwk) => node.signWitSvid!(id, jwk));
    } catch (e) {
      if (e instanceof SvidManagerError) throw e;
      throw new SvidManagerError('server-unavailable', `no WIT-SVID for ${entry.spiffeId.toString()}: ${(e as Error).message}`);
    }
  }

  async validateJwt(token: string, audience: string): Promise<ValidatedJwt> {
    const v = await validateJwtSvid(token, this.#jwtBundles, audience, { now: new Date(this.#now()) });
    return { spiffeId: v.id, claims: v.claims };
  }

  usesSelectorKind(kind: SelectorKind): boolean {
    return this.#kinds.has(kind);
  }

  subscribe(onChange: () => void): Unsubscribe {
    this.#listeners.add(onChange);
    return () => void this.#listeners.delete(onChange);
  }

  #emit(): void {
    for (const l of [...this.#listeners]) {
      try {
        l();
      } catch (e) {
        this.#log.error('a change listener failed', { err: e });
      }
    }
  }
}
