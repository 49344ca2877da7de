/**
 * The embedded datastore: one SQLite file through better-sqlite3 (WAL, foreign
 * keys, busy timeout, synchronous=NORMAL). Every write is one IMMEDIATE
 * transaction, so a failed write leaves nothing behind and writers from other
 * connections or processes queue on the file lock instead of failing midway.
 */
import { EventEmitter } from 'node:events';
import { chmodSync, closeSync, openSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import type { Database as Db, Statement } from 'better-sqlite3';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { EntryIndex } from './entry-index.js';
import { ConflictError, InvalidRecordError, NodeBannedError, NotFoundError, StoreError, StoreFullError } from './errors.js';
import {
  checkAgentId,
  checkAttestationKeys,
  checkBanReason,
  checkCaJournal,
  checkDriftReason,
  checkJwks,
  checkNodeStatusChange,
  checkNonce,
  checkQuote,
  checkRefreshHint,
  checkSequence,
  checkSvid,
  duplicateEntryError,
  entryValues,
  mergeEntryChanges,
  NODE_STATUS_AFTER,
  requireActiveNode,
  TOMBSTONE_RETENTION_MS,
  validDate,
  type NodeStatusChange,
} from './checks.js';
import { entryListQuery, nodeListQuery, pageOf } from './list-sql.js';
import { migrate } from './migrations.js';
import { RowDecoder, type BundleRow, type EntryRow, type NodeRow } from './rows.js';
import { formatSelector, normalizeSelectors, selectorSetKey, type Selector } from './selectors.js';
import type {
  AttestedNode,
  AuthorizedEntries,
  BatchItemResult,
  BatchResult,
  Datastore,
  EntryChanges,
  EntryFilter,
  EntryInput,
  FederatedBundle,
  NodeAttestation,
  NodeFilter,
  NodeRenewal,
  NonceConsumeResult,
  OwnBundle,
  Page,
  PageRequest,
  RegistrationEntry,
  StoreChange,
  Unsubscribe,
} from './types.js';
import { entryIdFrom, normalizeEntry, type NormalizedEntry } from './validate.js';

export interface SqliteDatastoreOptions {
  /** The database file (created when missing). */
  readonly path: string;
  /** How long a writer waits for another connection's lock; default 5000 ms. */
  readonly busyTimeoutMs?: number;
  /** Time source for createdAt/updatedAt/lastSeen; default `new Date()`. */
  readonly clock?: () => Date;
}

/** Thrown inside a batch transaction to roll it back after collecting every item's result. */
class RollBack extends Error {}

/** Mode of the database file and of its -wal and -shm files: they hold every entry, node and CA journal. */
export const SQLITE_FILE_MODE = 0o600;

/**
 * Creates the database file with mode 0600 before SQLite opens it (SQLite
 * would create it 0644 under the usual umask, and gives the -wal and -shm
 * files the mode of the database file). An existing file of ours that group
 * or others can read is tightened to 0600.
 */
function prepareDatabaseFile(path: string): void {
  if (path === '' || path === ':memory:' || path.startsWith('file:')) return;
  try {
    closeSync(openSync(path, 'wx', SQLITE_FILE_MODE));
    return;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  tighten(path);
}

/** chmod 0600 when the file exists, is ours and is open to group or others. */
function tighten(path: string): void {
  let st;
  try {
    st = statSync(path);
  } catch {
    return;
  }
  const mine = process.getuid === undefined || st.uid === process.getuid();
  if (st.isFile() && mine && (st.mode & 0o077) !== 0) chmodSync(path, SQLITE_FILE_MODE);
}

function toStoreError(e: unknown): StoreError {
  if (e instanceof StoreError) return e;
  const code = (e as { code?: unknown })?.code;
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
    return new ConflictError(String((e as Error).message));
  }
  if (code === 'SQLITE_FULL') return new StoreFullError({ cause: e });
  if (code === 'SQLITE_BUSY') return new StoreError('the database is locked by another writer (busy timeout expired)', { cause: e });
  if (e instanceof TypeError && /not open/.test(e.message)) return new StoreError('the store is closed', { cause: e });
  return new StoreError(`sqlite: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}

export class SqliteDatastore implements Datastore {
  private readonly statements = new Map<string, Statement>();
  private readonly events = new EventEmitter();
  private readonly clock: () => Date;
  /** Changes of the write transaction in progress, announced once it commits. */
  private pending: StoreChange[] | undefined;
  private index: EntryIndex | undefined;

  private constructor(
    private readonly db: Db,
    clock: () => Date,
  ) {
    this.clock = clock;
    this.events.setMaxListeners(0);
  }

  /** Opens (creating and migrating when needed) the database file. Throws SchemaTooNewError, StoreError. */
  static open(options: SqliteDatastoreOptions): SqliteDatastore {
    const timeout = options.busyTimeoutMs ?? 5000;
    let db: Db | undefined;
    try {
      prepareDatabaseFile(options.path);
      db = new Database(options.path, { timeout });
      db.pragma('journal_mode = WAL');
      // SQLite gives them the database file's mode; older ones, made before it was 0600, are tightened.
      if (!db.memory) for (const suffix of ['-wal', '-shm']) tighten(options.path + suffix);
      db.pragma('foreign_keys = ON');
      db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(timeout))}`);
      db.pragma('synchronous = NORMAL');
      migrate(db);
      return new SqliteDatastore(db, options.clock ?? (() => new Date()));
    } catch (e) {
      db?.close();
      throw toStoreError(e);
    }
  }

  // ── plumbing ──────────────────────────────────────────────────────────────

  private stmt(sql: string): Statement {
    let s = this.statements.get(sql);
    if (!s) this.statements.set(sql, (s = this.db.prepare(sql)));
    return s;
  }

  /** Runs `fn` and turns whatever it throws into a rejected StoreError. */
  private run<T>(fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (e) {
      return Promise.reject(toStoreError(e));
    }
  }

  /** One IMMEDIATE transaction; change events go out only after it commits. */
  private write<T>(fn: () => T): T {
    const changes: StoreChange[] = [];
    this.pending = changes;
    let result: T;
    try {
      result = this.db.transaction(fn).immediate();
    } finally {
      this.pending = undefined;
    }
    for (const c of changes) {
      // Listeners run after the caller's write has returned; a throwing listener must not look like a failed write.
      queueMicrotask(() => this.events.emit('change', c));
    }
    return result;
  }

  /** Bumps the store revision inside the current write transaction. */
  private bump(kind: StoreChange['kind']): number {
    const row = this.stmt(
      `UPDATE store_revision SET revision = revision + 1,
         entries_revision = CASE WHEN ? THEN revision + 1 ELSE entries_revision END
       WHERE id = 1 RETURNING revision`,
    ).get(kind === 'entries' ? 1 : 0) as { revision: number };
    this.pending?.push({ kind, revision: row.revision });
    return row.revision;
  }

  private readonly decoder = new RowDecoder();

  // ── entries ───────────────────────────────────────────────────────────────

  private entryRow(id: string): EntryRow | undefined {
    return this.stmt('SELECT * FROM entries WHERE id = ?').get(id) as EntryRow | undefined;
  }

  private checkUnique(n: NormalizedEntry, exceptId: string | undefined): void {
    const clash = this.stmt('SELECT id FROM entries WHERE spiffe_id = ? AND parent_id = ? AND selectors_key = ?').get(
      n.spiffeId.toString(),
      n.parentId.toString(),
      n.selectorsKey,
    ) as { id: string } | undefined;
    if (clash && clash.id !== exceptId) throw duplicateEntryError(n, clash.id);
  }

  private writeEntryChildren(id: string, n: NormalizedEntry): void {
    this.stmt('DELETE FROM entry_selectors WHERE entry_id = ?').run(id);
    this.stmt('DELETE FROM entry_federates_with WHERE entry_id = ?').run(id);
    const sel = this.stmt('INSERT INTO entry_selectors (entry_id, selector) VALUES (?, ?)');
    for (const s of n.selectors) sel.run(id, formatSelector(s));
    const fed = this.stmt('INSERT INTO entry_federates_with (entry_id, trust_domain) VALUES (?, ?)');
    for (const td of n.federatesWith) fed.run(id, td.name);
  }

  /** Inside a write transaction. */
  private insertEntry(input: EntryInput, revision: number, now: number): RegistrationEntry {
    const id = entryIdFrom(input.id);
    const n = normalizeEntry(input);
    if (this.entryRow(id)) throw new ConflictError(`entry id ${id} already exists`, id);
    this.checkUnique(n, undefined);
    this.stmt(
      `INSERT INTO entries (id, spiffe_id, parent_id, selectors_key, federates_key, x509_svid_ttl, jwt_svid_ttl,
         dns_names, admin, downstream, hint, expires_at, revision, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(id, ...entryValues(n), revision, now, now);
    this.writeEntryChildren(id, n);
    return this.decoder.entry(this.entryRow(id)!);
  }

  createEntry(input: EntryInput): Promise<RegistrationEntry> {
    return this.run(() => this.write(() => this.insertEntry(input, this.bump('entries'), this.clock().getTime())));
  }

  /**
   * Each item runs in its own savepoint so every failure is reported; if any
   * failed, the whole transaction is rolled back and the others say so.
   */
  private batch<I, T>(items: readonly I[], one: (item: I, revision: number, now: number) => T): BatchResult<T> {
    if (!Array.isArray(items)) throw new InvalidRecordError('batch', 'not a list');
    if (items.length === 0) return { committed: true, results: [] };
    const results: BatchItemResult<T>[] = [];
    try {
      this.write(() => {
        const revision = this.bump('entries');
        const now = this.clock().getTime();
        for (const item of items) {
          try {
            results.push({ status: 'done', value: this.db.transaction(() => one(item, revision, now))() });
          } catch (e) {
            results.push({ status: 'failed', error: toStoreError(e) });
          }
        }
        if (results.some((r) => r.status === 'failed')) throw new RollBack();
      });
    } catch (e) {
      if (!(e instanceof RollBack)) throw e;
      return {
        committed: false,
        results: results.map((r) => (r.status === 'done' ? { status: 'rolled-back' as const } : r)),
      };
    }
    return { committed: true, results };
  }

  createEntries(inputs: readonly EntryInput[]): Promise<BatchResult<RegistrationEntry>> {
    return this.run(() => this.batch(inputs, (input, revision, now) => this.insertEntry(input, revision, now)));
  }

  getEntry(id: string): Promise<RegistrationEntry | undefined> {
    return this.run(() => {
      const row = typeof id === 'string' ? this.entryRow(id) : undefined;
      return row && this.decoder.entry(row);
    });
  }

  updateEntry(id: string, changes: EntryChanges, options?: { readonly ifRevision?: number }): Promise<RegistrationEntry> {
    return this.run(() =>
      this.write(() => {
        const row = this.entryRow(id);
        if (!row) throw new NotFoundError('entry', id);
        if (options?.ifRevision !== undefined && options.ifRevision !== row.revision) {
          throw new ConflictError(`entry ${id} changed since revision ${options.ifRevision} (now ${row.revision})`, id);
        }
        const n = mergeEntryChanges(this.decoder.entry(row), changes);
        this.checkUnique(n, id);
        const revision = this.bump('entries');
        this.stmt(
          `UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors_key = ?, federates_key = ?, x509_svid_ttl = ?,
             jwt_svid_ttl = ?, dns_names = ?, admin = ?, downstream = ?, hint = ?, expires_at = ?, revision = ?, updated_at = ?
           WHERE id = ?`,
        ).run(...entryValues(n), revision, this.clock().getTime(), id);
        this.writeEntryChildren(id, n);
        return this.decoder.entry(this.entryRow(id)!);
      }),
    );
  }

  /** Inside a write transaction; leaves a tombstone so caches and syncs see the deletion. */
  private removeEntry(id: string, revision: number, now: number): RegistrationEntry {
    const row = typeof id === 'string' ? this.entryRow(id) : undefined;
    if (!row) throw new NotFoundError('entry', String(id));
    this.stmt('DELETE FROM entries WHERE id = ?').run(id);
    this.stmt('INSERT INTO entry_tombstones (id, revision, deleted_at) VALUES (?, ?, ?)').run(id, revision, now);
    return this.decoder.entry(row);
  }

  /** Drops tombstones older than TOMBSTONE_RETENTION_MS and raises the floor past them. */
  private pruneTombstones(now: number): void {
    const cutoff = now - TOMBSTONE_RETENTION_MS;
    const top = this.stmt('SELECT max(revision) FROM entry_tombstones WHERE deleted_at < ?').pluck().get(cutoff) as number | null;
    if (top === null) return;
    this.stmt('DELETE FROM entry_tombstones WHERE deleted_at < ?').run(cutoff);
    this.stmt('UPDATE store_revision SET tombstone_floor = max(tombstone_floor, ?) WHERE id = 1').run(top);
  }

  deleteEntry(id: string): Promise<RegistrationEntry> {
    return this.run(() =>
      this.write(() => {
        const now = this.clock().getTime();
        const e = this.removeEntry(id, this.bump('entries'), now);
        this.pruneTombstones(now);
        return e;
      }),
    );
  }

  deleteEntries(ids: readonly string[]): Promise<BatchResult<RegistrationEntry>> {
    return this.run(() => {
      const result = this.batch(ids, (id, revision, now) => this.removeEntry(id, revision, now));
      if (result.committed && ids.length) this.write(() => this.pruneTombstones(this.clock().getTime()));
      return result;
    });
  }

  listEntries(filter: EntryFilter = {}, page?: PageRequest): Promise<Page<RegistrationEntry>> {
    return this.run(() => {
      const q = entryListQuery(filter, page);
      const rows = this.db.prepare(q.sql).all(...q.params) as EntryRow[];
      return pageOf(rows, q.limit, (r) => this.decoder.entry(r), (e) => e.id);
    });
  }

  /**
   * The index for the current entries revision. Brought forward with the rows
   * written and the tombstones left since its revision (one read snapshot);
   * rebuilt from scratch only at first use or when the tombstones it needs were pruned.
   */
  private currentIndex(): EntryIndex {
    const head = this.stmt('SELECT entries_revision AS r, tombstone_floor AS floor FROM store_revision WHERE id = 1').get() as {
      r: number;
      floor: number;
    };
    const index = this.index;
    if (index?.revision === head.r) return index;
    const refresh = this.db.transaction(() => {
      const r = this.stmt('SELECT entries_revision FROM store_revision WHERE id = 1').pluck().get() as number;
      if (!index || index.revision < head.floor) {
        const rows = this.stmt('SELECT * FROM entries').all() as EntryRow[];
        return new EntryIndex(
          rows.map((row) => this.decoder.entry(row)),
          r,
        );
      }
      const rows = this.stmt('SELECT * FROM entries WHERE revision > ?').all(index.revision) as EntryRow[];
      const gone = this.stmt('SELECT id FROM entry_tombstones WHERE revision > ?').pluck().all(index.revision) as string[];
      index.apply(
        rows.map((row) => this.decoder.entry(row)),
        gone,
        r,
      );
      return index;
    });
    this.index = refresh.deferred();
    return this.index;
  }

  authorizedEntries(agentId: SpiffeId, agentNodeSelectors: readonly Selector[], now?: Date): Promise<AuthorizedEntries> {
    return this.run(() => {
      checkAgentId(agentId);
      const selectors = normalizeSelectors(agentNodeSelectors, 'agentNodeSelectors');
      const index = this.currentIndex();
      const at = now === undefined ? this.clock() : validDate('now', now);
      return { entries: index.authorized(agentId, selectors, at), revision: index.revision };
    });
  }

  // ── attested nodes ────────────────────────────────────────────────────────

  private nodeRow(agentId: SpiffeId): NodeRow | undefined {
    return this.stmt('SELECT * FROM nodes WHERE agent_id = ?').get(agentId.toString()) as NodeRow | undefined;
  }

  private nodeAfterWrite(agentId: SpiffeId): AttestedNode {
    return this.decoder.node(this.nodeRow(agentId)!);
  }

  private writeNodeSelectors(agentId: string, selectors: readonly Selector[]): void {
    this.stmt('DELETE FROM node_selectors WHERE agent_id = ?').run(agentId);
    const ins = this.stmt('INSERT INTO node_selectors (agent_id, selector) VALUES (?, ?)');
    for (const s of selectors) ins.run(agentId, formatSelector(s));
  }

  recordAttestation(a: NodeAttestation): Promise<AttestedNode> {
    return this.run(() => {
      const agentId = checkAgentId(a?.agentId);
      checkAttestationKeys(a);
      const selectors = normalizeSelectors(a.selectors, 'selectors');
      const svid = checkSvid(a.svid);
      const q = checkQuote(a.quote);
      const id = agentId.toString();
      return this.write(() => {
        const row = this.nodeRow(agentId);
        if (row?.status === 'banned') throw new NodeBannedError(id, row.banned_reason ?? '');
        const owner = this.stmt('SELECT agent_id FROM nodes WHERE ek_public_hash = ?').pluck().get(a.ekPublicHash) as string | undefined;
        if (owner !== undefined && owner !== id) throw new ConflictError(`EK ${a.ekPublicHash} is already recorded for ${owner}`, owner);
        if (row && row.ek_public_hash !== a.ekPublicHash) throw new ConflictError(`${id} is recorded with another EK (${row.ek_public_hash})`, id);
        const revision = this.bump('nodes');
        const now = this.clock().getTime();
        this.stmt(
          `INSERT INTO nodes (agent_id, ek_public_hash, ak_name, attestation_type, selectors_key, status, status_since,
             banned_reason, svid_serial, svid_not_after, quote_clock, quote_reset_count, quote_restart_count,
             first_seen, last_seen, revision)
           VALUES (?, ?, ?, 'tpm', ?, 'active', ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (agent_id) DO UPDATE SET ak_name = excluded.ak_name, selectors_key = excluded.selectors_key,
             status = 'active', status_since = CASE WHEN nodes.status = 'active' THEN nodes.status_since ELSE excluded.status_since END,
             banned_reason = NULL, svid_serial = excluded.svid_serial, svid_not_after = excluded.svid_not_after,
             quote_clock = excluded.quote_clock, quote_reset_count = excluded.quote_reset_count,
             quote_restart_count = excluded.quote_restart_count, last_seen = excluded.last_seen, revision = excluded.revision`,
        ).run(
          id,
          a.ekPublicHash,
          a.akName ?? null,
          selectorSetKey(selectors),
          now,
          svid.serial,
          svid.notAfter.getTime(),
          q.clock.toString(),
          q.resetCount,
          q.restartCount,
          now,
          now,
          revision,
        );
        this.writeNodeSelectors(id, selectors);
        return this.nodeAfterWrite(agentId);
      });
    });
  }

  renewNode(agentId: SpiffeId, r: NodeRenewal): Promise<AttestedNode> {
    return this.run(() => {
      const id = checkAgentId(agentId).toString();
      const selectors = normalizeSelectors(r?.selectors, 'selectors');
      const svid = checkSvid(r.svid);
      const q = checkQuote(r.quote);
      return this.write(() => {
        requireActiveNode(this.nodeRow(agentId), id, r.ifSvidSerial, ' (renewed meanwhile)');
        const revision = this.bump('nodes');
        this.stmt(
          `UPDATE nodes SET selectors_key = ?, svid_serial = ?, svid_not_after = ?, quote_clock = ?, quote_reset_count = ?,
             quote_restart_count = ?, last_seen = ?, revision = ? WHERE agent_id = ?`,
        ).run(selectorSetKey(selectors), svid.serial, svid.notAfter.getTime(), q.clock.toString(), q.resetCount, q.restartCount, this.clock().getTime(), revision, id);
        this.writeNodeSelectors(id, selectors);
        return this.nodeAfterWrite(agentId);
      });
    });
  }

  getNode(agentId: SpiffeId): Promise<AttestedNode | undefined> {
    return this.run(() => {
      const row = this.nodeRow(checkAgentId(agentId));
      return row && this.decoder.node(row);
    });
  }

  getNodeByEkHash(ekPublicHash: string): Promise<AttestedNode | undefined> {
    return this.run(() => {
      const row = this.stmt('SELECT * FROM nodes WHERE ek_public_hash = ?').get(String(ekPublicHash).toLowerCase()) as NodeRow | undefined;
      return row && this.decoder.node(row);
    });
  }

  listNodes(filter: NodeFilter = {}, page?: PageRequest): Promise<Page<AttestedNode>> {
    return this.run(() => {
      const q = nodeListQuery(filter, page);
      const rows = this.db.prepare(q.sql).all(...q.params) as NodeRow[];
      return pageOf(rows, q.limit, (r) => this.decoder.node(r), (n) => n.agentId.toString());
    });
  }

  /**
   * One write: the node as stored must allow `change` (checkNodeStatusChange);
   * it then leaves active, and the SVID it held stops being renewable.
   */
  private changeNodeStatus(agentId: SpiffeId, change: NodeStatusChange, reason: string | null, ifSvidSerial?: string): AttestedNode {
    const id = checkAgentId(agentId).toString();
    const to = NODE_STATUS_AFTER[change];
    return this.write(() => {
      checkNodeStatusChange(this.nodeRow(agentId), id, change, ifSvidSerial);
      const revision = this.bump('nodes');
      this.stmt(
        `UPDATE nodes SET status = ?, status_since = CASE WHEN status = ? THEN status_since ELSE ? END, banned_reason = ?,
           svid_serial = NULL, svid_not_after = NULL, revision = ? WHERE agent_id = ?`,
      ).run(to, to, this.clock().getTime(), reason, revision, id);
      return this.nodeAfterWrite(agentId);
    });
  }

  evictNode(agentId: SpiffeId): Promise<AttestedNode> {
    return this.run(() => this.changeNodeStatus(agentId, 'evict', null));
  }

  banNode(agentId: SpiffeId, reason: string): Promise<AttestedNode> {
    return this.run(() => this.changeNodeStatus(agentId, 'ban', checkBanReason(reason)));
  }

  markNodeDrifted(agentId: SpiffeId, reason: string, options: { readonly ifSvidSerial?: string } = {}): Promise<AttestedNode> {
    return this.run(() => this.changeNodeStatus(agentId, 'drift', checkDriftReason(reason), options.ifSvidSerial));
  }

  unbanNode(agentId: SpiffeId): Promise<AttestedNode> {
    return this.run(() => this.changeNodeStatus(agentId, 'unban', null));
  }

  // ── bundles ───────────────────────────────────────────────────────────────

  private bundleRow(td: TrustDomain): BundleRow | undefined {
    if (!(td instanceof TrustDomain)) throw new InvalidRecordError('trustDomain', 'not a TrustDomain');
    return this.stmt('SELECT * FROM bundles WHERE trust_domain = ?').get(td.name) as BundleRow | undefined;
  }

  getOwnBundle(trustDomain: TrustDomain): Promise<OwnBundle | undefined> {
    return this.run(() => {
      const row = this.bundleRow(trustDomain);
      return row?.kind === 'own' ? this.decoder.ownBundle(row) : undefined;
    });
  }

  setOwnBundle(trustDomain: TrustDomain, jwks: string, sequence: number): Promise<OwnBundle> {
    return this.run(() => {
      checkJwks('jwks', jwks);
      checkSequence(sequence);
      return this.write(() => {
        const row = this.bundleRow(trustDomain);
        if (row?.kind === 'federated') throw new ConflictError(`${trustDomain.name} is a federated trust domain`);
        if (row && row.sequence !== null && row.sequence >= sequence) {
          throw new ConflictError(`bundle sequence ${sequence} of ${trustDomain.name} is not greater than the stored ${row.sequence}`);
        }
        this.bump('bundles');
        this.stmt(
          `INSERT INTO bundles (trust_domain, kind, jwks, sequence, refresh_hint, updated_at) VALUES (?, 'own', ?, ?, NULL, ?)
           ON CONFLICT (trust_domain) DO UPDATE SET jwks = excluded.jwks, sequence = excluded.sequence, updated_at = excluded.updated_at`,
        ).run(trustDomain.name, jwks, sequence, this.clock().getTime());
        return this.decoder.ownBundle(this.bundleRow(trustDomain)!);
      });
    });
  }

  getFederatedBundle(trustDomain: TrustDomain): Promise<FederatedBundle | undefined> {
    return this.run(() => {
      const row = this.bundleRow(trustDomain);
      return row?.kind === 'federated' ? this.decoder.federatedBundle(row) : undefined;
    });
  }

  setFederatedBundle(trustDomain: TrustDomain, jwks: string, refreshHint?: number): Promise<FederatedBundle> {
    return this.run(() => {
      checkJwks('jwks', jwks);
      checkRefreshHint(refreshHint);
      return this.write(() => {
        const row = this.bundleRow(trustDomain);
        if (row?.kind === 'own') throw new ConflictError(`${trustDomain.name} is this store's own trust domain`);
        this.bump('bundles');
        this.stmt(
          `INSERT INTO bundles (trust_domain, kind, jwks, sequence, refresh_hint, updated_at) VALUES (?, 'federated', ?, NULL, ?, ?)
           ON CONFLICT (trust_domain) DO UPDATE SET jwks = excluded.jwks, refresh_hint = excluded.refresh_hint, updated_at = excluded.updated_at`,
        ).run(trustDomain.name, jwks, refreshHint ?? null, this.clock().getTime());
        return this.decoder.federatedBundle(this.bundleRow(trustDomain)!);
      });
    });
  }

  listFederatedBundles(): Promise<readonly FederatedBundle[]> {
    return this.run(() =>
      (this.stmt(`SELECT * FROM bundles WHERE kind = 'federated' ORDER BY trust_domain`).all() as BundleRow[]).map((r) =>
        this.decoder.federatedBundle(r),
      ),
    );
  }

  deleteFederatedBundle(trustDomain: TrustDomain): Promise<void> {
    return this.run(() =>
      this.write(() => {
        const row = this.bundleRow(trustDomain);
        if (row?.kind !== 'federated') throw new NotFoundError('bundle', trustDomain.name);
        const users = this.stmt('SELECT count(*) FROM entry_federates_with WHERE trust_domain = ?').pluck().get(trustDomain.name) as number;
        if (users > 0) throw new ConflictError(`${users} entries federate with ${trustDomain.name}`);
        this.stmt('DELETE FROM bundles WHERE trust_domain = ?').run(trustDomain.name);
        this.bump('bundles');
      }),
    );
  }

  // ── CA journal ────────────────────────────────────────────────────────────

  getCaJournal(serverId: string): Promise<string | undefined> {
    return this.run(() => this.stmt('SELECT journal FROM ca_journals WHERE server_id = ?').pluck().get(String(serverId)) as string | undefined);
  }

  putCaJournal(serverId: string, json: string): Promise<void> {
    return this.run(() => {
      checkCaJournal(serverId, json);
      // The CA treats a saved journal as durable (it may then use a new key), so this one
      // commit is synced to disk even though the store otherwise runs synchronous=NORMAL.
      this.db.pragma('synchronous = FULL');
      try {
        this.write(() => {
          this.stmt(
            `INSERT INTO ca_journals (server_id, journal, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (server_id) DO UPDATE SET journal = excluded.journal, updated_at = excluded.updated_at`,
          ).run(serverId, json, this.clock().getTime());
        });
      } finally {
        this.db.pragma('synchronous = NORMAL');
      }
    });
  }

  // ── nonces ────────────────────────────────────────────────────────────────

  issueNonce(nonce: string, expiresAt: Date, context: string): Promise<void> {
    return this.run(() => {
      const exp = checkNonce(nonce, expiresAt, context);
      this.write(() => {
        if (this.stmt('SELECT 1 FROM nonces WHERE nonce = ?').get(nonce)) throw new ConflictError('nonce already issued');
        this.stmt('INSERT INTO nonces (nonce, context, expires_at, used_at) VALUES (?, ?, ?, NULL)').run(nonce, context, exp);
      });
    });
  }

  consumeNonce(nonce: string, now: Date): Promise<NonceConsumeResult> {
    return this.run(() => {
      const t = validDate('now', now).getTime();
      if (typeof nonce !== 'string') return { kind: 'unknown' as const };
      return this.write((): NonceConsumeResult => {
        // The conditional UPDATE is the single-use guarantee: under the write lock only one caller can flip used_at.
        const won = this.stmt('UPDATE nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL AND expires_at > ? RETURNING context')
          .pluck()
          .get(t, nonce, t) as string | undefined;
        if (won !== undefined) return { kind: 'consumed', context: won };
        const row = this.stmt('SELECT expires_at, used_at FROM nonces WHERE nonce = ?').get(nonce) as
          | { expires_at: number; used_at: number | null }
          | undefined;
        if (!row) return { kind: 'unknown' };
        if (row.used_at !== null) return { kind: 'used', usedAt: new Date(row.used_at) };
        return { kind: 'expired', expiredAt: new Date(row.expires_at) };
      });
    });
  }

  pruneNonces(now: Date): Promise<number> {
    return this.run(() => {
      const t = validDate('now', now).getTime();
      return this.write(() => this.stmt('DELETE FROM nonces WHERE expires_at <= ?').run(t).changes);
    });
  }

  // ── change feed ───────────────────────────────────────────────────────────

  currentRevision(): Promise<number> {
    return this.run(() => this.stmt('SELECT revision FROM store_revision WHERE id = 1').pluck().get() as number);
  }

  subscribe(listener: (change: StoreChange) => void): Unsubscribe {
    this.events.on('change', listener);
    return () => this.events.off('change', listener);
  }

  close(): Promise<void> {
    return this.run(() => {
      if (this.db.open) this.db.close();
      this.index = undefined;
      this.statements.clear();
    });
  }
}
