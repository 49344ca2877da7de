/**
 * What the Workload API server needs from the rest of the agent. The SVID
 * manager implements it; the server never mints, caches or rotates anything.
 */
import type { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import type { Selector, SelectorKind } from './selectors.js';

export interface X509SvidMaterial {
  /** Leaf first, then intermediates up to (not including) a trust anchor. */
  readonly chainDer: readonly Buffer[];
  /** Unencrypted PKCS#8 DER; it only ever leaves the agent to the workload it was issued for. */
  readonly privateKeyPkcs8: Buffer;
  readonly expiresAt: Date;
}

/** One registration entry the caller matches, whether or not its X.509-SVID is there yet. */
export interface MatchedEntry {
  readonly entryId: string;
  readonly spiffeId: SpiffeId;
  /** Free-form label for workloads that get several identities; '' when none. */
  readonly hint: string;
  /** Trust domains whose bundles this identity receives in `federated_bundles`. */
  readonly federatesWith: readonly TrustDomain[];
}

/** One registration entry the caller matches, with its current X.509-SVID. */
export interface Identity extends MatchedEntry {
  readonly x509Svid: X509SvidMaterial;
}

/**
 * Where a caller stands with the agent, so that every answer means what it
 * says (docs/agent.md, "Status codes"):
 * - `matched`: entries match the caller. `identities` are those whose
 *   X.509-SVID the agent holds now; it may be shorter than `entries` (or
 *   empty) while SVIDs are being signed. JWT-SVIDs need only the entry.
 * - `unavailable`: the agent cannot tell, or cannot serve, right now (not in
 *   sync with the server since it started or reconnected, or its own SVID
 *   expired and is being renewed): the caller should retry (UNAVAILABLE).
 * - `denied`: no entry matches the caller, as of an up-to-date sync, or the
 *   node lost its identity (PERMISSION_DENIED).
 */
export type WorkloadLookup =
  | { readonly kind: 'matched'; readonly entries: readonly MatchedEntry[]; readonly identities: readonly Identity[] }
  | { readonly kind: 'unavailable'; readonly detail: string }
  | { readonly kind: 'denied'; readonly detail: string };

export interface FetchJwtOptions {
  /** Give up by then (ms since the epoch, the source's clock): the caller's gRPC deadline. */
  readonly deadline?: number;
}

export interface TrustDomainBundle {
  readonly trustDomain: TrustDomain;
  /** The X.509 authorities, DER certificates concatenated (as X509SVID.bundle carries them). */
  readonly x509Der: Buffer;
  /** The JWT authorities as a JWKS document (UTF-8 JSON). */
  readonly jwks: Buffer;
}

export interface BundleSnapshot {
  /** The agent's own trust domain. */
  readonly own: TrustDomainBundle;
  /** Federated trust domains, at most one bundle each. */
  readonly federated: readonly TrustDomainBundle[];
}

export interface IssuedJwtSvid {
  readonly token: string;
  readonly expiresAt: Date;
}

/** A WIT-SVID with the private key it binds (WITSVID.wit_svid_key). */
export interface IssuedWitSvid {
  readonly token: string;
  /** The workload's private key as a JWK (RFC 7517) JSON string, with `alg`. */
  readonly privateKeyJwk: string;
  readonly expiresAt: Date;
}

export interface ValidatedJwt {
  readonly spiffeId: SpiffeId;
  /** The token's claims, as JSON. */
  readonly claims: Readonly<Record<string, unknown>>;
}

export type Unsubscribe = () => void;

export interface IdentitySource {
  /** The identities of a workload with these selectors (entries whose selectors are all among them). Synchronous: served from the agent's cache. */
  identitiesFor(selectors: readonly Selector[]): readonly Identity[];
  /** The caller's entries, SVIDs and standing (see WorkloadLookup). Synchronous, like identitiesFor. */
  lookup(selectors: readonly Selector[]): WorkloadLookup;
  /** The current bundles. */
  bundles(): BundleSnapshot;
  /**
   * A JWT-SVID of entry `entryId` for `audience` (non-empty). The source
   * caches per (SPIFFE ID, audience) until near expiry. Rejects when the
   * entry is gone or no token can be minted by `options.deadline` (the
   * source retries, with backoff, until then).
   */
  fetchJwtSvid(entryId: string, audience: readonly string[], options?: FetchJwtOptions): Promise<IssuedJwtSvid>;
  /**
   * Validates a JWT-SVID against the trust domain bundles for `audience`.
   * Rejects with a JwtSvidError (src/spiffe) when the token is not valid.
   */
  validateJwt(token: string, audience: string): Promise<ValidatedJwt>;
  /**
   * A WIT-SVID of entry `entryId` with a key pair made for it. Optional: a
   * source without it makes FetchWITSVID and FetchWITBundles answer Unimplemented.
   */
  fetchWitSvid?(entryId: string): Promise<IssuedWitSvid>;
  /** Whether any entry has a selector of this kind (`unix:sha256`), so costly selectors are gathered only when needed. */
  usesSelectorKind(kind: SelectorKind): boolean;
  /** Called after every SVID rotation, bundle change or entry change; returns the way to stop. */
  subscribe(onChange: () => void): Unsubscribe;
}
