/**
 * An in-memory IdentitySource for the Workload API tests: real certificates
 * (openssl), real JWT-SVIDs (src/spiffe mintJwtSvid with an in-memory key),
 * real validation (validateJwtSvid). Entries match when all their selectors
 * are among the caller's, as the agent's cache matches them.
 */
import { X509Certificate, type KeyObject } from 'node:crypto';
import { signerFromPrivateKey } from '../../src/server/ca/index.js';
import { BundleSet, TrustBundle, bundleToJwksJson, mintJwtSvid, validateJwtSvid } from '../../src/spiffe/index.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import type { Signer } from '../../src/spiffe/signer.js';
import type {
  BundleSnapshot,
  FetchJwtOptions,
  Identity,
  IdentitySource,
  IssuedJwtSvid,
  MatchedEntry,
  TrustDomainBundle,
  Unsubscribe,
  ValidatedJwt,
  WorkloadLookup,
} from '../../src/agent/workload/identity-source.js';
import { formatSelector, kindOf, type Selector, type SelectorKind } from '../../src/agent/workload/selectors.js';
import { ecPrivateKey, issueLeaf, makeCa, type TestCa, type TestLeaf } from './certs.js';

export interface FakeEntry {
  readonly entryId: string;
  readonly spiffeId: string;
  readonly selectors: readonly Selector[];
  readonly hint?: string;
  readonly federatesWith?: readonly string[];
}

interface Domain {
  ca: TestCa;
  jwtKey: KeyObject;
  signer: Signer;
  bundle: TrustBundle;
}

function domain(name: string, ca = makeCa(name), jwtKey = ecPrivateKey()): Domain {
  const signer = signerFromPrivateKey(jwtKey, 'ES256');
  const bundle = TrustBundle.create({ trustDomain: name, x509Authorities: [new X509Certificate(ca.certDer)], jwtAuthorities: [[signer.keyId, signer.publicKey]] });
  return { ca, jwtKey, signer, bundle };
}

function wire(d: Domain): TrustDomainBundle {
  const jwtOnly = TrustBundle.create({ trustDomain: d.bundle.trustDomain, jwtAuthorities: d.bundle.jwtAuthorities });
  return {
    trustDomain: d.bundle.trustDomain,
    x509Der: Buffer.concat(d.bundle.x509Authorities.map((c) => c.raw)),
    jwks: Buffer.from(bundleToJwksJson(jwtOnly)),
  };
}

export class FakeIdentitySource implements IdentitySource {
  readonly own: Domain;
  readonly federated = new Map<string, Domain>();
  /** `leaf` undefined: the entry's SVID is still being signed. */
  readonly #entries = new Map<string, { entry: FakeEntry; leaf: TestLeaf | undefined }>();
  readonly #listeners = new Set<() => void>();
  readonly #jwtCache = new Map<string, IssuedJwtSvid>();
  /** Every selector set the server asked about (to check what attestation produced). */
  readonly seenSelectors: Selector[][] = [];
  jwtMints = 0;
  /** Test hook: awaited inside fetchJwtSvid before the token is returned. */
  beforeJwtReturn: (() => Promise<void>) | undefined;
  /** Test hook: fetchJwtSvid rejects with this (no token could be minted). */
  jwtFailure: Error | undefined;
  /** Test hook: false = not in sync with the server (a caller no entry matches is then told to retry). */
  inSync = true;
  /** Test hook: the node lost its identity for this reason (every caller is denied). */
  revoked: string | undefined;

  constructor(trustDomain = 'example.org') {
    this.own = domain(trustDomain);
  }

  get listenerCount(): number {
    return this.#listeners.size;
  }

  addFederatedDomain(name: string): void {
    this.federated.set(name, domain(name));
    this.#emit();
  }

  /** Adds or replaces an entry, issuing it a fresh SVID (`null`: none yet, as while it is being signed). */
  setEntry(entry: FakeEntry, leaf?: TestLeaf | null): void {
    this.#entries.set(entry.entryId, { entry, leaf: leaf === null ? undefined : (leaf ?? issueLeaf(this.own.ca, entry.spiffeId)) });
    this.#emit();
  }

  removeEntry(entryId: string): void {
    this.#entries.delete(entryId);
    this.#emit();
  }

  /** A new SVID for the entry (what the SVID manager does at rotation). */
  rotate(entryId: string, leaf?: TestLeaf): TestLeaf {
    const e = this.#entries.get(entryId);
    if (!e) throw new Error(`no entry ${entryId}`);
    const next = leaf ?? issueLeaf(this.own.ca, e.entry.spiffeId);
    this.#entries.set(entryId, { entry: e.entry, leaf: next });
    this.#emit();
    return next;
  }

  /** A new CA for the own trust domain published next to the old one. */
  addOwnAuthority(): TestCa {
    const ca = makeCa(this.own.bundle.trustDomain.name);
    this.own.bundle = this.own.bundle.with({ x509Authorities: [...this.own.bundle.x509Authorities, new X509Certificate(ca.certDer)] });
    this.#emit();
    return ca;
  }

  /** A new JWT signing key for the own trust domain, published next to the old one and used from now on. */
  addOwnJwtKey(): void {
    const signer = signerFromPrivateKey(ecPrivateKey(), 'ES256');
    this.own.bundle = this.own.bundle.with({ jwtAuthorities: [...this.own.bundle.jwtAuthorities, [signer.keyId, signer.publicKey] as const] });
    this.own.signer = signer;
    this.#jwtCache.clear();
    this.#emit();
  }

  /** Fires a change without changing anything (the server must not resend identical messages). */
  touch(): void {
    this.#emit();
  }

  leafOf(entryId: string): TestLeaf | undefined {
    return this.#entries.get(entryId)?.leaf;
  }

  identitiesFor(selectors: readonly Selector[]): readonly Identity[] {
    const l = this.lookup(selectors);
    return l.kind === 'matched' ? l.identities : [];
  }

  lookup(selectors: readonly Selector[]): WorkloadLookup {
    this.seenSelectors.push([...selectors]);
    if (this.revoked !== undefined) return { kind: 'denied', detail: `the node lost its identity (${this.revoked})` };
    const have = new Set(selectors.map(formatSelector));
    const entries: MatchedEntry[] = [];
    const identities: Identity[] = [];
    for (const { entry, leaf } of this.#entries.values()) {
      if (entry.selectors.length === 0 || !entry.selectors.every((s) => have.has(formatSelector(s)))) continue;
      const m: MatchedEntry = {
        entryId: entry.entryId,
        spiffeId: SpiffeId.parse(entry.spiffeId),
        hint: entry.hint ?? '',
        federatesWith: (entry.federatesWith ?? []).map((t) => TrustDomain.parse(t)),
      };
      entries.push(m);
      if (leaf) identities.push({ ...m, x509Svid: { chainDer: leaf.chainDer, privateKeyPkcs8: leaf.privateKeyPkcs8, expiresAt: leaf.expiresAt } });
    }
    if (entries.length > 0) return { kind: 'matched', entries, identities };
    if (!this.inSync) return { kind: 'unavailable', detail: 'not in sync with the server' };
    return { kind: 'denied', detail: 'no registration entry matches the selectors' };
  }

  bundles(): BundleSnapshot {
    return { own: wire(this.own), federated: [...this.federated.values()].map(wire) };
  }

  /** The options of the last fetchJwtSvid call (the deadline the server passed on). */
  lastJwtOptions: FetchJwtOptions | undefined;

  async fetchJwtSvid(entryId: string, audience: readonly string[], options?: FetchJwtOptions): Promise<IssuedJwtSvid> {
    this.lastJwtOptions = options;
    const e = this.#entries.get(entryId);
    if (!e) throw new Error(`entry ${entryId} is gone`);
    if (this.jwtFailure) throw this.jwtFailure;
    const key = `${e.entry.spiffeId}\u0000${[...audience].sort().join('\u0000')}`;
    let jwt = this.#jwtCache.get(key);
    if (!jwt || jwt.expiresAt.getTime() - Date.now() < 30_000) {
      const expiresAt = new Date(Math.floor(Date.now() / 1000) * 1000 + 300_000);
      const token = await mintJwtSvid({ signer: this.own.signer, sub: SpiffeId.parse(e.entry.spiffeId), aud: audience, expiresAt });
      this.jwtMints++;
      jwt = { token, expiresAt };
      this.#jwtCache.set(key, jwt);
    }
    await this.beforeJwtReturn?.();
    return jwt;
  }

  async validateJwt(token: string, audience: string): Promise<ValidatedJwt> {
    const set = BundleSet.of([this.own.bundle, ...[...this.federated.values()].map((d) => d.bundle)]);
    const v = await validateJwtSvid(token, set, audience);
    return { spiffeId: v.id, claims: v.claims };
  }

  usesSelectorKind(kind: SelectorKind): boolean {
    for (const { entry } of this.#entries.values()) if (entry.selectors.some((s) => kindOf(s) === kind)) return true;
    return false;
  }

  subscribe(onChange: () => void): Unsubscribe {
    this.#listeners.add(onChange);
    return () => this.#listeners.delete(onChange);
  }

  #emit(): void {
    for (const l of [...this.#listeners]) l();
  }
}
