/**
 * The shared datastore: one PostgreSQL database that several keel servers use
 * at once, through `pg` with a pool.
 *
 * Every write is one transaction that starts by bumping the store revision
 * (one row, `store_revision`): the row lock it takes makes writers queue as
 * they do on SQLite's file lock, so each check-then-write (uniqueness,
 * `ifRevision`, bundle sequence, ban state) holds across servers, and
 * revisions commit in the order they are numbered (what the incremental
 * authorized-entries index relies on). The same statement sends a NOTIFY,
 * which PostgreSQL delivers on commit only: every other store object on the
 * database, in any process, tells its subscribers within a round trip.
 *
 * Nonces are consumed by one conditional UPDATE … RETURNING, which PostgreSQL
 * lets only one connection win.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { PoolClient, QueryResultRow } from 'pg';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
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
import { EntryIndex } from './entry-index.js';
import { ConflictError, InvalidRecordError, NodeBannedError, NotFoundError, StoreError, StoreFullError } from './errors.js';
import { entryListQuery, nodeListQuery, pageOf } from './list-sql.js';
import { clientConfig, describeConnection, type PostgresConnectionOptions } from './pg-connection.js';
import { migratePostgres, PG_MIGRATIONS, type PgMigrateOptions } from './pg-migrations.js';
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

export interface PostgresDatastoreOptions extends PostgresConnectionOptions {
  /** Time source for createdAt/updatedAt/lastSeen; default `new Date()`. */
  readonly clock?: () => Date;
  /** How long to wait for another server's migration; default 60 s. */
  readonly migrationLockTimeoutMs?: number;
  /** Tests only: hooks into the migration. */
  readonly migrate?: PgMigrateOptions;
}

/** The NOTIFY channel of the change feed. Payload: `<origin> <kind> <revision>`. */
export const CHANGE_CHANNEL = 'keel_store_changes';
const KINDS: readonly StoreChange['kind'][] = ['entries', 'nodes', 'bundles'];
const MAX_TX_ATTEMPTS = 4;

class RollBack extends Error {}

const sqlCache = new Map<string, string>();
/** Numbers the `?` placeholders (shared with the SQLite SQL, set-match-sql.ts) as `$1, $2…`. */
function numbered(sql: string): string {
  let out = sqlCache.get(sql);
  if (out === undefined) {
    let i = 0;
    out = sql.replace(/\?/g, () => `$${++i}`);
    if (sqlCache.size < 1000) sqlCache.set(sql, out);
  }
  return out;
}

const RETRYABLE = new Set(['40001', '40P01']); // serialization failure, deadlock detected
const UNREACHABLE = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006', '08001', '08004']);

function toStoreError(e: unknown): StoreError {
  if (e instanceof StoreError) return e;
  const err = e as { code?: unknown; message?: unknown; detail?: unknown; constraint?: unknown };
  const code = typeof err?.code === 'string' ? err.code : undefined;
  const message = e instanceof Error ? e.message : String(e);
  if (code === '23505') return new ConflictError(`${message}${typeof err.detail === 'string' ? ` (${err.detail})` : ''}`);
  if (code === '53100') return new StoreFullError({ cause: e, code: 'PG_DISK_FULL' });
  if (code === '22021' || code === '22P05') return new InvalidRecordError('text', `cannot be stored in the database's encoding: ${message}`);
  if (code === '54000') return new InvalidRecordError('record', `a value is too large for the database's index: ${message}`);
  if (code === '28P01' || code === '28000') return new StoreError(`postgres: the database refused the login: ${message}`, { cause: e });
  if (code !== undefined && UNREACHABLE.has(code)) return new StoreError(`postgres: the database connection is gone: ${message}`, { cause: e });
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return new StoreError(`postgres: cannot reach the database: ${message}`, { cause: e });
  return new StoreError(`postgres: ${message}`, { cause: e });
}

/** One transaction's connection, with `?` SQL and prepared statements. */
class Tx {
  constructor(
    private readonly client: PoolClient,
    private readonly names: Map<string, string>,
  ) {}

  private async query<R extends QueryResultRow>(sql: string, params: readonly unknown[], prepare: boolean) {
    const text = numbered(sql);
    if (!prepare) return this.client.query<R>(text, params as unknown[]);
    let name = this.names.get(text);
    if (name === undefined) this.names.set(text, (name = `keel_${this.names.size}`));
    return this.client.query<R>({ name, text, values: params as unknown[] });
  }

  async all<R extends QueryResultRow>(sql: string, ...params: unknown[]): Promise<R[]> {
    return (await this.query<R>(sql, params, true)).rows;
  }

  /** Dynamic SQL (filters): not prepared. */
  async dynamic<R extends QueryResultRow>(sql: string, params: readonly unknown[]): Promise<R[]> {
    return (await this.query<R>(sql, params, false)).rows;
  }

  async get<R extends QueryResultRow>(sql: string, ...params: unknown[]): Promise<R | undefined> {
    return (await this.query<R>(sql, params, true)).rows[0];
  }

  async run(sql: string, ...params: unknown[]): Promise<number> {
    return (await this.query(sql, params, true)).rowCount ?? 0;
  }

  exec(sql: string): Promise<unknown> {
    return this.client.query(sql);
  }
}

export class PostgresDatastore implements Datastore {
  private readonly events = new EventEmitter();
  private readonly decoder = new RowDecoder();
  /** Prepared statement names: the same on every connection of the pool. */
  private readonly names = new Map<string, string>();
  /** Marks this object's own NOTIFYs, so that its subscribers hear each change once. */
  private readonly origin = randomBytes(9).toString('base64url');
  private index: EntryIndex | undefined;
  private indexRefresh: Promise<EntryIndex> | undefined;
  private listener: pg.Client | undefined;
  private listenerRetry: NodeJS.Timeout | undefined;
  /** The highest revision the feed has announced (own writes and others'). */
  private announced = 0;
  private closed = false;

  private constructor(
    private readonly pool: pg.Pool,
    private readonly config: pg.ClientConfig,
    private readonly clock: () => Date,
    readonly description: string,
  ) {
    this.events.setMaxListeners(0);
    // An idle connection that the server drops must not crash the process; the next query gets a fresh one.
    this.pool.on('error', () => undefined);
  }

  /**
   * Connects, migrates (once across every server starting at the same time)
   * and starts listening for other servers' changes. Throws SchemaTooNewError, StoreError.
   */
  static async open(options: PostgresDatastoreOptions): Promise<PostgresDatastore> {
    const { max, ...config } = clientConfig(options);
    const pool = new pg.Pool({ ...config, max });
    const store = new PostgresDatastore(pool, config, options.clock ?? (() => new Date()), describeConnection(options));
    try {
      const client = await pool.connect();
      let broken: Error | undefined;
      try {
        await migratePostgres(client, PG_MIGRATIONS, {
          lockTimeoutMs: options.migrationLockTimeoutMs ?? 60_000,
          ...options.migrate,
        });
      } catch (e) {
        broken = e as Error;
        throw e;
      } finally {
        // A connection that failed mid-migration may still hold the lock or a transaction: never reuse it.
        client.release(broken ?? false);
      }
      await store.listen();
      store.announced = await store.currentRevision();
      return store;
    } catch (e) {
      await store.close().catch(() => undefined);
      throw toStoreError(e);
    }
  }

  // ── plumbing ──────────────────────────────────────────────────────────────

  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new StoreError('the store is closed');
    try {
      return await fn();
    } catch (e) {
      throw toStoreError(e);
    }
  }

  /** A read outside any transaction. */
  private async read<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      return await fn(new Tx(client, this.names));
    } catch (e) {
      // A database error leaves the connection usable; anything else (a dropped socket…) retires it.
      if (!(e instanceof StoreError) && !(e instanceof pg.DatabaseError)) broken = e as Error;
      throw e;
    } finally {
      client.release(broken ?? false);
    }
  }

  /**
   * One transaction. With `kind`, it starts by bumping the store revision
   * (the store's write lock) and announces the change once committed.
   */
  private async write<T>(kind: StoreChange['kind'] | undefined, fn: (tx: Tx, revision: number) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      const tx = new Tx(client, this.names);
      let revision = 0;
      let released = false;
      try {
        await tx.exec('BEGIN');
        if (kind) revision = await this.bump(tx, kind);
        const result = await fn(tx, revision);
        await tx.exec('COMMIT');
        client.release();
        released = true;
        if (kind) this.announce({ kind, revision });
        return result;
      } catch (e) {
        let rollbackFailed: Error | undefined;
        await tx.exec('ROLLBACK').catch((x: Error) => (rollbackFailed = x));
        if (!released) client.release(rollbackFailed ?? false);
        const code = (e as { code?: unknown })?.code;
        if (typeof code === 'string' && RETRYABLE.has(code) && attempt < MAX_TX_ATTEMPTS) continue;
        throw e;
      }
    }
  }

  private async bump(tx: Tx, kind: StoreChange['kind']): Promise<number> {
    const row = await tx.get<{ revision: number }>(
      `WITH r AS (
         UPDATE store_revision SET revision = revision + 1,
           entries_revision = CASE WHEN ? THEN revision + 1 ELSE entries_revision END
         WHERE id = 1 RETURNING revision)
       SELECT r.revision, pg_notify('${CHANGE_CHANNEL}', ? || r.revision::text) FROM r`,
      kind === 'entries',
      `${this.origin} ${kind} `,
    );
    if (!row) throw new StoreError('the store has no revision row: not a keel database?');
    return Number(row.revision);
  }

  private announce(change: StoreChange): void {
    if (change.revision > this.announced) this.announced = change.revision;
    // Listeners run after the caller's write has returned; a throwing listener must not look like a failed write.
    queueMicrotask(() => this.events.emit('change', change));
  }

  /** LISTENs on a connection of its own (outside the pool); reconnects with a catch-up when it is lost. */
  private async listen(): Promise<void> {
    const client = new pg.Client(this.config);
    client.on('error', () => this.listenerLost(client));
    client.on('end', () => this.listenerLost(client));
    client.on('notification', (msg) => {
      if (msg.channel !== CHANGE_CHANNEL || !msg.payload) return;
      const [origin, kind, rev] = msg.payload.split(' ');
      const revision = Number(rev);
      if (origin === this.origin || !KINDS.includes(kind as StoreChange['kind']) || !Number.isSafeInteger(revision)) return;
      this.announce({ kind: kind as StoreChange['kind'], revision });
    });
    await client.connect();
    await client.query(`LISTEN ${CHANGE_CHANNEL}`);
    this.listener = client;
  }

  private listenerLost(client: pg.Client): void {
    if (this.listener !== client) return;
    this.listener = undefined;
    client.end().catch(() => undefined);
    this.scheduleListen(250);
  }

  private scheduleListen(delayMs: number): void {
    if (this.closed || this.listenerRetry) return;
    this.listenerRetry = setTimeout(async () => {
      this.listenerRetry = undefined;
      if (this.closed) return;
      try {
        await this.listen();
        // Whatever was written while nobody listened: one change of each kind at the current revision.
        const now = await this.currentRevision();
        if (now > this.announced) for (const kind of KINDS) this.announce({ kind, revision: now });
      } catch {
        this.scheduleListen(Math.min(delayMs * 2, 5000));
      }
    }, delayMs);
    this.listenerRetry.unref();
  }

  // ── entries ───────────────────────────────────────────────────────────────

  private entryRow(tx: Tx, id: string): Promise<EntryRow | undefined> {
    return tx.get<EntryRow>('SELECT * FROM entries WHERE id = ?', id);
  }

  private async checkUnique(tx: Tx, n: NormalizedEntry, exceptId: string | undefined): Promise<void> {
    const clash = await tx.get<{ id: string }>(
      'SELECT id FROM entries WHERE spiffe_id = ? AND parent_id = ? AND selectors_key = ?',
      n.spiffeId.toString(),
      n.parentId.toString(),
      n.selectorsKey,
    );
    if (clash && clash.id !== exceptId) throw duplicateEntryError(n, clash.id);
  }

  private async writeEntryChildren(tx: Tx, id: string, n: NormalizedEntry): Promise<void> {
    await tx.run('DELETE FROM entry_selectors WHERE entry_id = ?', id);
    await tx.run('DELETE FROM entry_federates_with WHERE entry_id = ?', id);
    if (n.selectors.length) {
      await tx.run('INSERT INTO entry_selectors (entry_id, selector) SELECT ?, unnest(?::text[])', id, n.selectors.map(formatSelector));
    }
    if (n.federatesWith.length) {
      await tx.run('INSERT INTO entry_federates_with (entry_id, trust_domain) SELECT ?, unnest(?::text[])', id, n.federatesWith.map((t) => t.name));
    }
  }

  private async insertEntry(tx: Tx, input: EntryInput, revision: number, now: number): Promise<RegistrationEntry> {
    const id = entryIdFrom(input.id);
    const n = normalizeEntry(input);
    if (await this.entryRow(tx, id)) throw new ConflictError(`entry id ${id} already exists`, id);
    await this.checkUnique(tx, n, undefined);
    const row = await tx.get<EntryRow>(
      `INSERT INTO entries (id, spiffe_id, parent_id, selectors_key, federates_key, x509_svid_ttl, jwt_svid_ttl,
         dns_names, admin, downstream, hint, expires_at, revision, created_at, updated_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *`,
      id,
      ...entryValues(n),
      revision,
      now,
      now,
    );
    await this.writeEntryChildren(tx, id, n);
    return this.decoder.entry(row!);
  }

  createEntry(input: EntryInput): Promise<RegistrationEntry> {
    return this.guard(() => this.write('entries', (tx, revision) => this.insertEntry(tx, input, revision, this.clock().getTime())));
  }

  /** Each item in its own savepoint, so every failure is reported; one failure rolls the whole batch back. */
  private async batch<I, T>(items: readonly I[], one: (tx: Tx, item: I, revision: number, now: number) => Promise<T>): Promise<BatchResult<T>> {
    if (!Array.isArray(items)) throw new InvalidRecordError('batch', 'not a list');
    if (items.length === 0) return { committed: true, results: [] };
    const results: BatchItemResult<T>[] = [];
    try {
      await this.write('entries', async (tx, revision) => {
        results.length = 0; // a retried transaction starts over
        const now = this.clock().getTime();
        for (const item of items) {
          await tx.exec('SAVEPOINT item');
          try {
            results.push({ status: 'done', value: await one(tx, item, revision, now) });
            await tx.exec('RELEASE SAVEPOINT item');
          } catch (e) {
            const code = (e as { code?: unknown })?.code;
            if (typeof code === 'string' && RETRYABLE.has(code)) throw e;
            await tx.exec('ROLLBACK TO SAVEPOINT item');
            results.push({ status: 'failed', error: toStoreError(e) });
          }
        }
        if (results.some((r) => r.status === 'failed')) throw new RollBack();
      });
    } catch (e) {
      if (!(e instanceof RollBack)) throw e;
      return { committed: false, results: results.map((r) => (r.status === 'done' ? { status: 'rolled-back' as const } : r)) };
    }
    return { committed: true, results };
  }

  createEntries(inputs: readonly EntryInput[]): Promise<BatchResult<RegistrationEntry>> {
    return this.guard(() => this.batch(inputs, (tx, input, revision, now) => this.insertEntry(tx, input, revision, now)));
  }

  getEntry(id: string): Promise<RegistrationEntry | undefined> {
    return this.guard(async () => {
      if (typeof id !== 'string') return undefined;
      const row = await this.read((tx) => this.entryRow(tx, id));
      return row && this.decoder.entry(row);
    });
  }

  updateEntry(id: string, changes: EntryChanges, options?: { readonly ifRevision?: number }): Promise<RegistrationEntry> {
    return this.guard(() =>
      this.write('entries', async (tx, revision) => {
        const row = typeof id === 'string' ? await this.entryRow(tx, id) : undefined;
        if (!row) throw new NotFoundError('entry', String(id));
        if (options?.ifRevision !== undefined && options.ifRevision !== row.revision) {
          throw new ConflictError(`entry ${id} changed since revision ${options.ifRevision} (now ${row.revision})`, id);
        }
        const n = mergeEntryChanges(this.decoder.entry(row), changes);
        await this.checkUnique(tx, n, id);
        const updated = await tx.get<EntryRow>(
          `UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors_key = ?, federates_key = ?, x509_svid_ttl = ?,
             jwt_svid_ttl = ?, dns_names = ?, admin = ?, downstream = ?, hint = ?, expires_at = ?, revision = ?, updated_at = ?
           WHERE id = ? RETURNING *`,
          ...entryValues(n),
          revision,
          this.clock().getTime(),
          id,
        );
        await this.writeEntryChildren(tx, id, n);
        return this.decoder.entry(updated!);
      }),
    );
  }

  private async removeEntry(tx: Tx, id: string, revision: number, now: number): Promise<RegistrationEntry> {
    const row = typeof id === 'string' ? await tx.get<EntryRow>('DELETE FROM entries WHERE id = ? RETURNING *', id) : undefined;
    if (!row) throw new NotFoundError('entry', String(id));
    await tx.run('INSERT INTO entry_tombstones (id, revision, deleted_at) VALUES (?, ?, ?)', id, revision, now);
    return this.decoder.entry(row);
  }

  private async pruneTombstones(tx: Tx, now: number): Promise<void> {
    const cutoff = now - TOMBSTONE_RETENTION_MS;
    const top = await tx.get<{ top: number | null }>('SELECT max(revision) AS top FROM entry_tombstones WHERE deleted_at < ?', cutoff);
    if (top?.top == null) return;
    await tx.run('DELETE FROM entry_tombstones WHERE deleted_at < ?', cutoff);
    await tx.run('UPDATE store_revision SET tombstone_floor = GREATEST(tombstone_floor, ?) WHERE id = 1', top.top);
  }

  deleteEntry(id: string): Promise<RegistrationEntry> {
    return this.guard(() =>
      this.write('entries', async (tx, revision) => {
        const now = this.clock().getTime();
        const e = await this.removeEntry(tx, id, revision, now);
        await this.pruneTombstones(tx, now);
        return e;
      }),
    );
  }

  deleteEntries(ids: readonly string[]): Promise<BatchResult<RegistrationEntry>> {
    return this.guard(async () => {
      const result = await this.batch(ids, (tx, id, revision, now) => this.removeEntry(tx, id, revision, now));
      if (result.committed && ids.length) await this.write(undefined, (tx) => this.pruneTombstones(tx, this.clock().getTime()));
      return result;
    });
  }

  listEntries(filter: EntryFilter = {}, page?: PageRequest): Promise<Page<RegistrationEntry>> {
    return this.guard(async () => {
      const q = entryListQuery(filter, page);
      const rows = await this.read((tx) => tx.dynamic<EntryRow>(q.sql, q.params));
      return pageOf(rows, q.limit, (r) => this.decoder.entry(r), (e) => e.id);
    });
  }

  /**
   * The index at the current entries revision: brought forward from one
   * REPEATABLE READ snapshot with the rows written and the tombstones left
   * since its revision, rebuilt only at first use or when those were pruned.
   * One refresh at a time; callers meanwhile wait for it.
   */
  private async currentIndex(): Promise<EntryIndex> {
    const head = await this.read((tx) =>
      tx.get<{ r: number; floor: number }>('SELECT entries_revision AS r, tombstone_floor AS floor FROM store_revision WHERE id = 1'),
    );
    if (this.index && this.index.revision >= head!.r) return this.index;
    while (this.indexRefresh) {
      const idx = await this.indexRefresh;
      if (idx.revision >= head!.r) return idx;
    }
    const refresh = this.refreshIndex();
    this.indexRefresh = refresh;
    try {
      return (this.index = await refresh);
    } finally {
      this.indexRefresh = undefined;
    }
  }

  private async refreshIndex(): Promise<EntryIndex> {
    const index = this.index;
    const client = await this.pool.connect();
    const tx = new Tx(client, this.names);
    try {
      await tx.exec('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const head = (await tx.get<{ r: number; floor: number }>(
        'SELECT entries_revision AS r, tombstone_floor AS floor FROM store_revision WHERE id = 1',
      ))!;
      let out: EntryIndex;
      if (!index || index.revision < head.floor) {
        const rows = await tx.all<EntryRow>('SELECT * FROM entries');
        out = new EntryIndex(
          rows.map((row) => this.decoder.entry(row)),
          head.r,
        );
      } else {
        const rows = await tx.all<EntryRow>('SELECT * FROM entries WHERE revision > ?', index.revision);
        const gone = await tx.all<{ id: string }>('SELECT id FROM entry_tombstones WHERE revision > ?', index.revision);
        index.apply(
          rows.map((row) => this.decoder.entry(row)),
          gone.map((g) => g.id),
          head.r,
        );
        out = index;
      }
      await tx.exec('COMMIT');
      client.release();
      return out;
    } catch (e) {
      await tx.exec('ROLLBACK').catch(() => undefined);
      client.release(e as Error);
      throw e;
    }
  }

  authorizedEntries(agentId: SpiffeId, agentNodeSelectors: readonly Selector[], now?: Date): Promise<AuthorizedEntries> {
    return this.guard(async () => {
      checkAgentId(agentId);
      const selectors = normalizeSelectors(agentNodeSelectors, 'agentNodeSelectors');
      const at = now === undefined ? this.clock() : validDate('now', now);
      const index = await this.currentIndex();
      return { entries: index.authorized(agentId, selectors, at), revision: index.revision };
    });
  }

  // ── attested nodes ────────────────────────────────────────────────────────

  private nodeRow(tx: Tx, agentId: SpiffeId): Promise<NodeRow | undefined> {
    return tx.get<NodeRow>('SELECT * FROM nodes WHERE agent_id = ?', agentId.toString());
  }

  private async nodeAfterWrite(tx: Tx, agentId: SpiffeId): Promise<AttestedNode> {
    return this.decoder.node((await this.nodeRow(tx, agentId))!);
  }

  private async writeNodeSelectors(tx: Tx, agentId: string, selectors: readonly Selector[]): Promise<void> {
    await tx.run('DELETE FROM node_selectors WHERE agent_id = ?', agentId);
    if (selectors.length) {
      await tx.run('INSERT INTO node_selectors (agent_id, selector) SELECT ?, unnest(?::text[])', agentId, selectors.map(formatSelector));
    }
  }

  recordAttestation(a: NodeAttestation): Promise<AttestedNode> {
    return this.guard(async () => {
      const agentId = checkAgentId(a?.agentId);
      checkAttestationKeys(a);
      const selectors = normalizeSelectors(a.selectors, 'selectors');
      const svid = checkSvid(a.svid);
      const q = checkQuote(a.quote);
      const id = agentId.toString();
      return this.write('nodes', async (tx, revision) => {
        const row = await this.nodeRow(tx, agentId);
        if (row?.status === 'banned') throw new NodeBannedError(id, row.banned_reason ?? '');
        const owner = await tx.get<{ agent_id: string }>('SELECT agent_id FROM nodes WHERE ek_public_hash = ?', a.ekPublicHash);
        if (owner !== undefined && owner.agent_id !== id) throw new ConflictError(`EK ${a.ekPublicHash} is already recorded for ${owner.agent_id}`, owner.agent_id);
        if (row && row.ek_public_hash !== a.ekPublicHash) throw new ConflictError(`${id} is recorded with another EK (${row.ek_public_hash})`, id);
        const now = this.clock().getTime();
        await tx.run(
          `INSERT INTO nodes (agent_id, ek_public_hash, ak_name, attestation_type, selectors_key, status, status_since,
             banned_reason, svid_serial, svid_not_after, quote_clock, quote_reset_count, quote_restart_count,
             first_seen, last_seen, revision)
           VALUES (?, ?, ?, 'tpm', ?, 'active', ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (agent_id) DO UPDATE SET ak_name = excluded.ak_name, selectors_key = excluded.selectors_key,
             status = 'active', status_since = CASE WHEN nodes.status = 'active' THEN nodes.status_since ELSE excluded.status_since END,
             banned_reason = NULL, svid_serial = excluded.svid_serial, svid_not_after = excluded.svid_not_after,
             quote_clock = excluded.quote_clock, quote_reset_count = excluded.quote_reset_count,
             quote_restart_count = excluded.quote_restart_count, last_seen = excluded.last_seen, revision = excluded.revision`,
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
        await this.writeNodeSelectors(tx, id, selectors);
        return this.nodeAfterWrite(tx, agentId);
      });
    });
  }

  renewNode(agentId: SpiffeId, r: NodeRenewal): Promise<AttestedNode> {
    return this.guard(async () => {
      const id = checkAgentId(agentId).toString();
      const selectors = normalizeSelectors(r?.selectors, 'selectors');
      const svid = checkSvid(r.svid);
      const q = checkQuote(r.quote);
      return this.write('nodes', async (tx, revision) => {
        requireActiveNode(await this.nodeRow(tx, agentId), id, r.ifSvidSerial, ' (renewed meanwhile)');
        await tx.run(
          `UPDATE nodes SET selectors_key = ?, svid_serial = ?, svid_not_after = ?, quote_clock = ?, quote_reset_count = ?,
             quote_restart_count = ?, last_seen = ?, revision = ? WHERE agent_id = ?`,
          selectorSetKey(selectors),
          svid.serial,
          svid.notAfter.getTime(),
          q.clock.toString(),
          q.resetCount,
          q.restartCount,
          this.clock().getTime(),
          revision,
          id,
        );
        await this.writeNodeSelectors(tx, id, selectors);
        return this.nodeAfterWrite(tx, agentId);
      });
    });
  }

  getNode(agentId: SpiffeId): Promise<AttestedNode | undefined> {
    return this.guard(async () => {
      const row = await this.read((tx) => this.nodeRow(tx, checkAgentId(agentId)));
      return row && this.decoder.node(row);
    });
  }

  getNodeByEkHash(ekPublicHash: string): Promise<AttestedNode | undefined> {
    return this.guard(async () => {
      const row = await this.read((tx) => tx.get<NodeRow>('SELECT * FROM nodes WHERE ek_public_hash = ?', String(ekPublicHash).toLowerCase()));
      return row && this.decoder.node(row);
    });
  }

  listNodes(filter: NodeFilter = {}, page?: PageRequest): Promise<Page<AttestedNode>> {
    return this.guard(async () => {
      const q = nodeListQuery(filter, page);
      const rows = await this.read((tx) => tx.dynamic<NodeRow>(q.sql, q.params));
      return pageOf(rows, q.limit, (r) => this.decoder.node(r), (n) => n.agentId.toString());
    });
  }

  /**
   * One write: the node as stored must allow `change` (checkNodeStatusChange);
   * it then leaves active, and the SVID it held stops being renewable.
   */
  private changeNodeStatus(agentId: SpiffeId, change: NodeStatusChange, reason: string | null, ifSvidSerial?: string): Promise<AttestedNode> {
    const id = checkAgentId(agentId).toString();
    const to = NODE_STATUS_AFTER[change];
    return this.write('nodes', async (tx, revision) => {
      checkNodeStatusChange(await this.nodeRow(tx, agentId), id, change, ifSvidSerial);
      await tx.run(
        `UPDATE nodes SET status = ?, status_since = CASE WHEN status = ? THEN status_since ELSE ? END, banned_reason = ?,
           svid_serial = NULL, svid_not_after = NULL, revision = ? WHERE agent_id = ?`,
        to,
        to,
        this.clock().getTime(),
        reason,
        revision,
        id,
      );
      return this.nodeAfterWrite(tx, agentId);
    });
  }

  evictNode(agentId: SpiffeId): Promise<AttestedNode> {
    return this.guard(() => this.changeNodeStatus(agentId, 'evict', null));
  }

  banNode(agentId: SpiffeId, reason: string): Promise<AttestedNode> {
    return this.guard(() => this.changeNodeStatus(agentId, 'ban', checkBanReason(reason)));
  }

  markNodeDrifted(agentId: SpiffeId, reason: string, options: { readonly ifSvidSerial?: string } = {}): Promise<AttestedNode> {
    return this.guard(() => this.changeNodeStatus(agentId, 'drift', checkDriftReason(reason), options.ifSvidSerial));
  }

  unbanNode(agentId: SpiffeId): Promise<AttestedNode> {
    return this.guard(() => this.changeNodeStatus(agentId, 'unban', null));
  }

  // ── bundles ───────────────────────────────────────────────────────────────

  private bundleRow(tx: Tx, td: TrustDomain): Promise<BundleRow | undefined> {
    if (!(td instanceof TrustDomain)) throw new InvalidRecordError('trustDomain', 'not a TrustDomain');
    return tx.get<BundleRow>('SELECT * FROM bundles WHERE trust_domain = ?', td.name);
  }

  getOwnBundle(trustDomain: TrustDomain): Promise<OwnBundle | undefined> {
    return this.guard(async () => {
      const row = await this.read((tx) => this.bundleRow(tx, trustDomain));
      return row?.kind === 'own' ? this.decoder.ownBundle(row) : undefined;
    });
  }

  setOwnBundle(trustDomain: TrustDomain, jwks: string, sequence: number): Promise<OwnBundle> {
    return this.guard(async () => {
      checkJwks('jwks', jwks);
      checkSequence(sequence);
      return this.write('bundles', async (tx) => {
        const row = await this.bundleRow(tx, trustDomain);
        if (row?.kind === 'federated') throw new ConflictError(`${trustDomain.name} is a federated trust domain`);
        if (row && row.sequence !== null && row.sequence >= sequence) {
          throw new ConflictError(`bundle sequence ${sequence} of ${trustDomain.name} is not greater than the stored ${row.sequence}`);
        }
        // The WHERE repeats the rule in the statement itself: a sequence never goes back, whatever else runs.
        const written = await tx.get<BundleRow>(
          `INSERT INTO bundles (trust_domain, kind, jwks, sequence, refresh_hint, updated_at) VALUES (?, 'own', ?, ?, NULL, ?)
           ON CONFLICT (trust_domain) DO UPDATE SET jwks = excluded.jwks, sequence = excluded.sequence, updated_at = excluded.updated_at
           WHERE bundles.kind = 'own' AND bundles.sequence < excluded.sequence
           RETURNING *`,
          trustDomain.name,
          jwks,
          sequence,
          this.clock().getTime(),
        );
        if (!written) throw new ConflictError(`bundle sequence ${sequence} of ${trustDomain.name} is not greater than the stored one`);
        return this.decoder.ownBundle(written);
      });
    });
  }

  getFederatedBundle(trustDomain: TrustDomain): Promise<FederatedBundle | undefined> {
    return this.guard(async () => {
      const row = await this.read((tx) => this.bundleRow(tx, trustDomain));
      return row?.kind === 'federated' ? this.decoder.federatedBundle(row) : undefined;
    });
  }

  setFederatedBundle(trustDomain: TrustDomain, jwks: string, refreshHint?: number): Promise<FederatedBundle> {
    return this.guard(async () => {
      checkJwks('jwks', jwks);
      checkRefreshHint(refreshHint);
      return this.write('bundles', async (tx) => {
        const row = await this.bundleRow(tx, trustDomain);
        if (row?.kind === 'own') throw new ConflictError(`${trustDomain.name} is this store's own trust domain`);
        const written = await tx.get<BundleRow>(
          `INSERT INTO bundles (trust_domain, kind, jwks, sequence, refresh_hint, updated_at) VALUES (?, 'federated', ?, NULL, ?, ?)
           ON CONFLICT (trust_domain) DO UPDATE SET jwks = excluded.jwks, refresh_hint = excluded.refresh_hint, updated_at = excluded.updated_at
           RETURNING *`,
          trustDomain.name,
          jwks,
          refreshHint ?? null,
          this.clock().getTime(),
        );
        return this.decoder.federatedBundle(written!);
      });
    });
  }

  listFederatedBundles(): Promise<readonly FederatedBundle[]> {
    return this.guard(async () =>
      (await this.read((tx) => tx.all<BundleRow>(`SELECT * FROM bundles WHERE kind = 'federated' ORDER BY trust_domain`))).map((r) =>
        this.decoder.federatedBundle(r),
      ),
    );
  }

  deleteFederatedBundle(trustDomain: TrustDomain): Promise<void> {
    return this.guard(async () => {
      await this.write('bundles', async (tx) => {
        const row = await this.bundleRow(tx, trustDomain);
        if (row?.kind !== 'federated') throw new NotFoundError('bundle', trustDomain.name);
        const users = await tx.get<{ n: number }>('SELECT count(*) AS n FROM entry_federates_with WHERE trust_domain = ?', trustDomain.name);
        if (users!.n > 0) throw new ConflictError(`${users!.n} entries federate with ${trustDomain.name}`);
        await tx.run('DELETE FROM bundles WHERE trust_domain = ?', trustDomain.name);
      });
    });
  }

  // ── CA journal ────────────────────────────────────────────────────────────

  getCaJournal(serverId: string): Promise<string | undefined> {
    return this.guard(async () => {
      const row = await this.read((tx) => tx.get<{ journal: string }>('SELECT journal FROM ca_journals WHERE server_id = ?', String(serverId)));
      return row?.journal;
    });
  }

  /** One upsert, committed with synchronous_commit on (the CA treats a saved journal as durable). */
  putCaJournal(serverId: string, json: string): Promise<void> {
    return this.guard(async () => {
      checkCaJournal(serverId, json);
      await this.write(undefined, async (tx) => {
        await tx.exec(`SET LOCAL synchronous_commit = on`);
        await tx.run(
          `INSERT INTO ca_journals (server_id, journal, updated_at) VALUES (?, ?, ?)
           ON CONFLICT (server_id) DO UPDATE SET journal = excluded.journal, updated_at = excluded.updated_at`,
          serverId,
          json,
          this.clock().getTime(),
        );
      });
    });
  }

  // ── nonces ────────────────────────────────────────────────────────────────

  issueNonce(nonce: string, expiresAt: Date, context: string): Promise<void> {
    return this.guard(async () => {
      const exp = checkNonce(nonce, expiresAt, context);
      const n = await this.read((tx) =>
        tx.run('INSERT INTO nonces (nonce, context, expires_at, used_at) VALUES (?, ?, ?, NULL) ON CONFLICT (nonce) DO NOTHING', nonce, context, exp),
      );
      if (n === 0) throw new ConflictError('nonce already issued');
    });
  }

  consumeNonce(nonce: string, now: Date): Promise<NonceConsumeResult> {
    return this.guard(async () => {
      const t = validDate('now', now).getTime();
      if (typeof nonce !== 'string') return { kind: 'unknown' as const };
      return this.read(async (tx): Promise<NonceConsumeResult> => {
        // The single-use guarantee: a second UPDATE of the row waits for the first, then finds used_at set and changes nothing.
        const won = await tx.get<{ context: string }>(
          'UPDATE nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL AND expires_at > ? RETURNING context',
          t,
          nonce,
          t,
        );
        if (won !== undefined) return { kind: 'consumed', context: won.context };
        const row = await tx.get<{ expires_at: number; used_at: number | null }>('SELECT expires_at, used_at FROM nonces WHERE nonce = ?', nonce);
        if (!row) return { kind: 'unknown' };
        if (row.used_at !== null) return { kind: 'used', usedAt: new Date(row.used_at) };
        return { kind: 'expired', expiredAt: new Date(row.expires_at) };
      });
    });
  }

  pruneNonces(now: Date): Promise<number> {
    return this.guard(async () => {
      const t = validDate('now', now).getTime();
      return this.read((tx) => tx.run('DELETE FROM nonces WHERE expires_at <= ?', t));
    });
  }

  // ── change feed ───────────────────────────────────────────────────────────

  currentRevision(): Promise<number> {
    return this.guard(async () => {
      const row = await this.read((tx) => tx.get<{ revision: number }>('SELECT revision FROM store_revision WHERE id = 1'));
      return row!.revision;
    });
  }

  /** Changes written through any store object on this database, in any process. */
  subscribe(listener: (change: StoreChange) => void): Unsubscribe {
    this.events.on('change', listener);
    return () => this.events.off('change', listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.listenerRetry) clearTimeout(this.listenerRetry);
    const listener = this.listener;
    this.listener = undefined;
    this.index = undefined;
    await listener?.end().catch(() => undefined);
    try {
      await this.pool.end();
    } catch (e) {
      throw toStoreError(e);
    }
  }
}
