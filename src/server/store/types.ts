/**
 * The records the server keeps and the Datastore interface over them. Every
 * method is asynchronous so that a PostgreSQL backend (several servers on one
 * database) can implement the same interface; the embedded SQLite store
 * answers synchronously underneath.
 */
import type { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import type { StoreError } from './errors.js';
import type { Selector } from './selectors.js';

/** A registration entry's id: a lowercase UUID. */
export type EntryId = string & { readonly __brand: 'EntryId' };

// ── registration entries ────────────────────────────────────────────────────

export interface RegistrationEntry {
  readonly id: EntryId;
  readonly spiffeId: SpiffeId;
  /**
   * An agent's SPIFFE ID, a node group's SPIFFE ID (the spiffeId of an entry
   * parented to the server, see `serverIdOf`), or any entry's SPIFFE ID (a
   * descendant). An entry parented to the server ID IS a node group: its
   * selectors are node selectors.
   */
  readonly parentId: SpiffeId;
  /** Sorted, without duplicates, never empty. */
  readonly selectors: readonly Selector[];
  /** Seconds; undefined means the server's default. */
  readonly x509SvidTtl: number | undefined;
  readonly jwtSvidTtl: number | undefined;
  readonly dnsNames: readonly string[];
  /** Sorted by name, without duplicates. */
  readonly federatesWith: readonly TrustDomain[];
  readonly admin: boolean;
  readonly downstream: boolean;
  readonly hint: string | undefined;
  readonly expiresAt: Date | undefined;
  /** The store revision of this entry's last write (monotonic across the store). */
  readonly revision: number;
  readonly createdAt: Date;
  readonly updatedAt: Date;
}

export interface EntryInput {
  /** A UUID chosen by the caller (imports); generated when absent. */
  readonly id?: string;
  readonly spiffeId: SpiffeId;
  readonly parentId: SpiffeId;
  readonly selectors: readonly Selector[];
  readonly x509SvidTtl?: number;
  readonly jwtSvidTtl?: number;
  readonly dnsNames?: readonly string[];
  readonly federatesWith?: readonly TrustDomain[];
  readonly admin?: boolean;
  readonly downstream?: boolean;
  readonly hint?: string;
  readonly expiresAt?: Date;
}

/** Fields to change; absent = unchanged, `null` = cleared back to the default. */
export interface EntryChanges {
  readonly spiffeId?: SpiffeId;
  readonly parentId?: SpiffeId;
  readonly selectors?: readonly Selector[];
  readonly x509SvidTtl?: number | null;
  readonly jwtSvidTtl?: number | null;
  readonly dnsNames?: readonly string[];
  readonly federatesWith?: readonly TrustDomain[];
  readonly admin?: boolean;
  readonly downstream?: boolean;
  readonly hint?: string | null;
  readonly expiresAt?: Date | null;
}

/**
 * How a record's set (selectors, federatesWith) must relate to the set asked for:
 * exact = equal; subset = record's ⊆ asked (what a workload with these selectors
 * matches); superset = record's ⊇ asked; any = at least one in common.
 */
export type SetMatch = 'exact' | 'subset' | 'superset' | 'any';

export interface EntryFilter {
  readonly parentId?: SpiffeId;
  readonly spiffeId?: SpiffeId;
  readonly selectors?: { readonly match: SetMatch; readonly selectors: readonly Selector[] };
  readonly federatesWith?: { readonly match: SetMatch; readonly trustDomains: readonly TrustDomain[] };
  readonly hint?: string;
  readonly downstream?: boolean;
}

export interface PageRequest {
  /** From the previous page's nextCursor. */
  readonly cursor?: string;
  /** 1..1000, default 100. */
  readonly limit?: number;
}

export interface Page<T> {
  readonly items: readonly T[];
  /** Present when there may be more. */
  readonly nextCursor: string | undefined;
}

/** What the server hands an agent: the entries and the store revision they reflect. */
export interface AuthorizedEntries {
  readonly entries: readonly RegistrationEntry[];
  readonly revision: number;
}

/** One item of an all-or-nothing batch. */
export type BatchItemResult<T> =
  | { readonly status: 'done'; readonly value: T }
  | { readonly status: 'failed'; readonly error: StoreError }
  /** Valid on its own, not written because another item of the batch failed. */
  | { readonly status: 'rolled-back' };

export interface BatchResult<T> {
  /** True when every item was written; false when none was. */
  readonly committed: boolean;
  readonly results: readonly BatchItemResult<T>[];
}

// ── attested nodes ──────────────────────────────────────────────────────────

/** The agent SVID the server last issued to a node. */
export interface SvidRef {
  /** Lowercase hex, no leading zeros stripped or added: as the CA wrote it. */
  readonly serial: string;
  readonly notAfter: Date;
}

/** TPMS_CLOCK_INFO of the node's last verified quote, kept for rollback checks. */
export interface QuoteClock {
  readonly clock: bigint;
  readonly resetCount: number;
  readonly restartCount: number;
}

/**
 * active: holds an SVID. evicted: lost its identity, may attest again.
 * banned: refused until unbanned (unbanning leaves it evicted).
 */
export type NodeStatus =
  | { readonly kind: 'active'; readonly svid: SvidRef }
  | { readonly kind: 'evicted'; readonly since: Date }
  | { readonly kind: 'banned'; readonly since: Date; readonly reason: string }
  /** Out of its firmware policy at a continuous attestation; it may attest again (e.g. after a reboot into the right firmware). */
  | { readonly kind: 'drifted'; readonly since: Date; readonly reason: string };

export interface AttestedNode {
  readonly agentId: SpiffeId;
  /** Lowercase hex SHA-256 of the EK public key (PKIX DER). */
  readonly ekPublicHash: string;
  /** Lowercase hex TPM name of the AK. */
  readonly akName: string | undefined;
  readonly attestationType: 'tpm';
  /** Sorted, without duplicates. */
  readonly selectors: readonly Selector[];
  readonly status: NodeStatus;
  readonly lastQuote: QuoteClock;
  readonly firstSeen: Date;
  readonly lastSeen: Date;
  readonly revision: number;
}

/** A successful attestation, recorded in one write. */
export interface NodeAttestation {
  readonly agentId: SpiffeId;
  readonly ekPublicHash: string;
  readonly akName?: string;
  readonly selectors: readonly Selector[];
  readonly svid: SvidRef;
  readonly quote: QuoteClock;
}

/** A successful renewal (fresh quote, new SVID). */
export interface NodeRenewal {
  readonly svid: SvidRef;
  readonly quote: QuoteClock;
  /** The node selectors from the fresh quote (they may have changed). */
  readonly selectors: readonly Selector[];
  /**
   * Compare-and-set: the serial of the SVID the agent presented. When another
   * renewal already replaced it, the write is refused with ConflictError.
   */
  readonly ifSvidSerial?: string;
}

export interface NodeFilter {
  readonly status?: NodeStatus['kind'];
  readonly selectors?: { readonly match: SetMatch; readonly selectors: readonly Selector[] };
  /** Nodes not seen since this instant. */
  readonly lastSeenBefore?: Date;
}

// ── bundles ─────────────────────────────────────────────────────────────────

export interface OwnBundle {
  readonly trustDomain: TrustDomain;
  /** The SPIFFE bundle, JWKS JSON text. */
  readonly jwks: string;
  readonly sequence: number;
  readonly updatedAt: Date;
}

export interface FederatedBundle {
  readonly trustDomain: TrustDomain;
  readonly jwks: string;
  /** Seconds, from the bundle's spiffe_refresh_hint or the federation config. */
  readonly refreshHint: number | undefined;
  readonly updatedAt: Date;
}

// ── nonces ──────────────────────────────────────────────────────────────────

export type NonceConsumeResult =
  | { readonly kind: 'consumed'; readonly context: string }
  | { readonly kind: 'unknown' }
  | { readonly kind: 'used'; readonly usedAt: Date }
  | { readonly kind: 'expired'; readonly expiredAt: Date };

// ── change feed ─────────────────────────────────────────────────────────────

export interface StoreChange {
  readonly kind: 'entries' | 'nodes' | 'bundles';
  /** The store revision after the change. */
  readonly revision: number;
}

export type Unsubscribe = () => void;

export interface Datastore {
  // registration entries
  createEntry(input: EntryInput): Promise<RegistrationEntry>;
  /** All or nothing: one bad item → nothing written; every item gets a result. */
  createEntries(inputs: readonly EntryInput[]): Promise<BatchResult<RegistrationEntry>>;
  getEntry(id: string): Promise<RegistrationEntry | undefined>;
  /** `ifRevision`: refuse with ConflictError when the entry changed since it was read. */
  updateEntry(id: string, changes: EntryChanges, options?: { readonly ifRevision?: number }): Promise<RegistrationEntry>;
  deleteEntry(id: string): Promise<RegistrationEntry>;
  deleteEntries(ids: readonly string[]): Promise<BatchResult<RegistrationEntry>>;
  /** Ordered by id. */
  listEntries(filter?: EntryFilter, page?: PageRequest): Promise<Page<RegistrationEntry>>;
  /**
   * The entries an agent may hold: parented to the agent, parented to a node
   * group whose selectors ⊆ the agent's node selectors, and, transitively,
   * entries parented to any of those entries' SPIFFE IDs. Expired entries (and
   * what hangs below them only) are left out. Node-group entries themselves are not included.
   */
  authorizedEntries(agentId: SpiffeId, agentNodeSelectors: readonly Selector[], now?: Date): Promise<AuthorizedEntries>;

  // attested nodes
  /** Upsert after a successful attestation; refused with NodeBannedError for a banned node. */
  recordAttestation(attestation: NodeAttestation): Promise<AttestedNode>;
  /** NotFoundError, NodeBannedError, NodeNotActiveError (evicted), ConflictError (ifSvidSerial). */
  renewNode(agentId: SpiffeId, renewal: NodeRenewal): Promise<AttestedNode>;
  getNode(agentId: SpiffeId): Promise<AttestedNode | undefined>;
  getNodeByEkHash(ekPublicHash: string): Promise<AttestedNode | undefined>;
  /** Ordered by agent ID. */
  listNodes(filter?: NodeFilter, page?: PageRequest): Promise<Page<AttestedNode>>;
  /** The node loses its identity (status evicted, SVID no longer renewable) and may attest again; ConflictError when banned. */
  evictNode(agentId: SpiffeId): Promise<AttestedNode>;
  banNode(agentId: SpiffeId, reason: string): Promise<AttestedNode>;
  /**
   * An active node whose measurements left its policy: loses its identity
   * like an eviction, with the reason kept. `ifSvidSerial`: only while it still
   * holds that SVID (ConflictError otherwise); NodeNotActiveError when not active.
   */
  markNodeDrifted(agentId: SpiffeId, reason: string, options?: { readonly ifSvidSerial?: string }): Promise<AttestedNode>;
  /** Back to evicted: it may attest again. ConflictError when it is not banned. */
  unbanNode(agentId: SpiffeId): Promise<AttestedNode>;

  // bundles
  getOwnBundle(trustDomain: TrustDomain): Promise<OwnBundle | undefined>;
  /** `sequence` must be greater than the stored one (ConflictError otherwise): no lost update between servers. */
  setOwnBundle(trustDomain: TrustDomain, jwks: string, sequence: number): Promise<OwnBundle>;
  getFederatedBundle(trustDomain: TrustDomain): Promise<FederatedBundle | undefined>;
  setFederatedBundle(trustDomain: TrustDomain, jwks: string, refreshHint?: number): Promise<FederatedBundle>;
  listFederatedBundles(): Promise<readonly FederatedBundle[]>;
  /** ConflictError while entries federate with it. */
  deleteFederatedBundle(trustDomain: TrustDomain): Promise<void>;

  // CA journal (opaque JSON, one per server)
  getCaJournal(serverId: string): Promise<string | undefined>;
  putCaJournal(serverId: string, json: string): Promise<void>;

  // attestation nonces
  /** ConflictError when the nonce was already issued. */
  issueNonce(nonce: string, expiresAt: Date, context: string): Promise<void>;
  /** Atomic and single-use across every connection to the store. */
  consumeNonce(nonce: string, now: Date): Promise<NonceConsumeResult>;
  /** Deletes nonces that expired before `now`; returns how many. */
  pruneNonces(now: Date): Promise<number>;

  // change feed
  currentRevision(): Promise<number>;
  /**
   * Changes, told after they commit. SQLite: those written through this store
   * object (other processes: poll currentRevision). PostgreSQL: those written
   * through any store object on the database, in any process (LISTEN/NOTIFY);
   * after a lost listening connection, one change of each kind at the current revision.
   */
  subscribe(listener: (change: StoreChange) => void): Unsubscribe;

  close(): Promise<void>;
}
