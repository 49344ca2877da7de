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

/** One registration entry the caller matches, with its current X.509-SVID. */
export interface Identity {
  readonly entryId: string;
  readonly spiffeId: SpiffeId;
  /** Free-form label for workloads that get several identities; '' when none. */
  readonly hint: string;
  readonly x509Svid: X509SvidMaterial;
  /** Trust domains whose bundles this identity receives in `federated_bundles`. */
  readonly federatesWith: readonly TrustDomain[];
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

export interface ValidatedJwt {
  readonly spiffeId: SpiffeId;
  /** The token's claims, as JSON. */
  readonly claims: Readonly<Record<string, unknown>>;
}

export type Unsubscribe = () => void;

export interface IdentitySource {
  /** The identities of a workload with these selectors (entries whose selectors are all among them). Synchronous: served from the agent's cache. */
  identitiesFor(selectors: readonly Selector[]): readonly Identity[];
  /** The current bundles. */
  bundles(): BundleSnapshot;
  /**
   * A JWT-SVID of entry `entryId` for `audience` (non-empty). The source
   * caches per (SPIFFE ID, audience) until near expiry. Rejects when the
   * entry is gone or no token can be minted.
   */
  fetchJwtSvid(entryId: string, audience: readonly string[]): Promise<IssuedJwtSvid>;
  /**
   * Validates a JWT-SVID against the trust domain bundles for `audience`.
   * Rejects with a JwtSvidError (src/spiffe) when the token is not valid.
   */
  validateJwt(token: string, audience: string): Promise<ValidatedJwt>;
  /** Whether any entry has a selector of this kind (`unix:sha256`), so costly selectors are gathered only when needed. */
  usesSelectorKind(kind: SelectorKind): boolean;
  /** Called after every SVID rotation, bundle change or entry change; returns the way to stop. */
  subscribe(onChange: () => void): Unsubscribe;
}
