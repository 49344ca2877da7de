/**
 * The PostgreSQL schema, numbered like the SQLite one (version n here holds
 * what version n holds there), with the same columns: times are milliseconds
 * since the epoch in BIGINT, flags SMALLINT 0/1, sets canonical JSON text, so
 * that rows.ts decodes the rows of both.
 *
 * Several servers may start at once on one fresh database: the migration runs
 * under a session advisory lock on one dedicated connection, each version in
 * its own transaction together with its schema_version row, and the version
 * is read again once the lock is held. Nothing else is done while the lock is
 * held, so no other connection of the pool is ever waited for (the deadlock
 * SPIRE met when a migration waited on its own pool).
 */
import type { ClientBase } from 'pg';
import { SchemaTooNewError, StoreError } from './errors.js';
import { latestVersion, stillToApply, type Migration } from './migrations.js';

export const PG_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'entries, nodes, bundles, CA journals, nonces, store revision',
    sql: `
      CREATE TABLE store_revision (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision BIGINT NOT NULL,
        entries_revision BIGINT NOT NULL,
        tombstone_floor BIGINT NOT NULL
      );
      INSERT INTO store_revision (id, revision, entries_revision, tombstone_floor) VALUES (1, 0, 0, 0);

      -- keys that are listed in order sort bytewise (COLLATE "C"), as SQLite sorts them
      CREATE TABLE entries (
        id TEXT COLLATE "C" PRIMARY KEY,
        spiffe_id TEXT COLLATE "C" NOT NULL,
        parent_id TEXT COLLATE "C" NOT NULL,
        selectors_key TEXT COLLATE "C" NOT NULL,
        federates_key TEXT COLLATE "C" NOT NULL,
        x509_svid_ttl BIGINT CHECK (x509_svid_ttl > 0),
        jwt_svid_ttl BIGINT CHECK (jwt_svid_ttl > 0),
        dns_names TEXT NOT NULL,
        admin SMALLINT NOT NULL CHECK (admin IN (0, 1)),
        downstream SMALLINT NOT NULL CHECK (downstream IN (0, 1)),
        hint TEXT,
        expires_at BIGINT,
        revision BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
      );
      -- (spiffe_id, parent_id, selectors_key) is unique; hashed because a btree entry holds at most ~2.7 kB
      CREATE UNIQUE INDEX entries_unique ON entries (md5(spiffe_id || E'\\n' || parent_id || E'\\n' || selectors_key));
      CREATE INDEX entries_by_parent ON entries (parent_id);
      CREATE INDEX entries_by_spiffe_id ON entries (spiffe_id);
      CREATE INDEX entries_by_revision ON entries (revision);

      CREATE TABLE entry_selectors (
        entry_id TEXT COLLATE "C" NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        selector TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (entry_id, selector)
      );
      CREATE INDEX entry_selectors_by_selector ON entry_selectors (selector, entry_id);
      CREATE TABLE entry_federates_with (
        entry_id TEXT COLLATE "C" NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        trust_domain TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (entry_id, trust_domain)
      );
      CREATE INDEX entry_federates_with_by_td ON entry_federates_with (trust_domain, entry_id);

      CREATE TABLE entry_tombstones (
        id TEXT COLLATE "C" NOT NULL,
        revision BIGINT NOT NULL,
        deleted_at BIGINT NOT NULL
      );
      CREATE INDEX entry_tombstones_by_revision ON entry_tombstones (revision);
      CREATE INDEX entry_tombstones_by_time ON entry_tombstones (deleted_at);

      CREATE TABLE nodes (
        agent_id TEXT COLLATE "C" PRIMARY KEY,
        ek_public_hash TEXT COLLATE "C" NOT NULL UNIQUE,
        ak_name TEXT,
        attestation_type TEXT NOT NULL CHECK (attestation_type = 'tpm'),
        selectors_key TEXT COLLATE "C" NOT NULL,
        status TEXT NOT NULL CONSTRAINT nodes_status_known CHECK (status IN ('active', 'evicted', 'banned')),
        status_since BIGINT NOT NULL,
        banned_reason TEXT,
        svid_serial TEXT,
        svid_not_after BIGINT,
        quote_clock TEXT NOT NULL,
        quote_reset_count BIGINT NOT NULL,
        quote_restart_count BIGINT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        revision BIGINT NOT NULL,
        CONSTRAINT nodes_svid_iff_active CHECK ((status = 'active') = (svid_serial IS NOT NULL AND svid_not_after IS NOT NULL)),
        CONSTRAINT nodes_reason_iff_banned CHECK ((status = 'banned') = (banned_reason IS NOT NULL))
      );
      CREATE TABLE node_selectors (
        agent_id TEXT COLLATE "C" NOT NULL REFERENCES nodes (agent_id) ON DELETE CASCADE,
        selector TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (agent_id, selector)
      );
      CREATE INDEX node_selectors_by_selector ON node_selectors (selector, agent_id);

      CREATE TABLE bundles (
        trust_domain TEXT COLLATE "C" PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('own', 'federated')),
        jwks TEXT NOT NULL,
        sequence BIGINT,
        refresh_hint BIGINT,
        updated_at BIGINT NOT NULL,
        CHECK ((kind = 'own') = (sequence IS NOT NULL))
      );

      CREATE TABLE ca_journals (
        server_id TEXT COLLATE "C" PRIMARY KEY,
        journal TEXT NOT NULL,
        updated_at BIGINT NOT NULL
      );

      CREATE TABLE nonces (
        nonce TEXT COLLATE "C" PRIMARY KEY,
        context TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
      );
      CREATE INDEX nonces_by_expiry ON nonces (expires_at);
    `,
  },
  {
    version: 2,
    description: "nodes: status 'drifted' (out of firmware policy at a continuous attestation), with its reason",
    sql: `
      ALTER TABLE nodes DROP CONSTRAINT nodes_status_known,
        ADD CONSTRAINT nodes_status_known CHECK (status IN ('active', 'evicted', 'banned', 'drifted'));
      ALTER TABLE nodes DROP CONSTRAINT nodes_reason_iff_banned,
        ADD CONSTRAINT nodes_reason_iff_banned_or_drifted CHECK ((status IN ('banned', 'drifted')) = (banned_reason IS NOT NULL));
    `,
  },
];

export const PG_LATEST_SCHEMA_VERSION = latestVersion(PG_MIGRATIONS);

/** pg_advisory_lock(int, int) key: 'keel' and the migration lock's number. */
export const MIGRATION_LOCK: readonly [number, number] = [0x6b65656c, 1];

async function readVersion(client: ClientBase): Promise<number> {
  const exists = await client.query<{ t: string | null }>(`SELECT to_regclass('schema_version')::text AS t`);
  if (exists.rows[0]?.t == null) return 0;
  const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_version');
  return Number(r.rows[0]?.v ?? 0);
}

export interface PgMigrateOptions {
  /** How long to wait for another server's migration; default 60 s. */
  readonly lockTimeoutMs?: number;
  /** Called once the lock is held (tests use it to hold a migration open). */
  readonly onLocked?: () => Promise<void> | void;
}

/**
 * Brings the database to the latest version on `client` (a connection of its
 * own); refuses one written by a newer keel. Returns the version found at the end.
 */
export async function migratePostgres(
  client: ClientBase,
  migrations: readonly Migration[] = PG_MIGRATIONS,
  options: PgMigrateOptions = {},
): Promise<number> {
  const latest = latestVersion(migrations);
  // Fast path: a restart on a migrated database takes no lock.
  const seen = await readVersion(client);
  if (seen > latest) throw new SchemaTooNewError(seen, latest);
  if (seen === latest) return seen;

  const deadline = Date.now() + (options.lockTimeoutMs ?? 60_000);
  for (;;) {
    const got = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [...MIGRATION_LOCK]);
    if (got.rows[0]?.ok) break;
    if (Date.now() > deadline) {
      throw new StoreError(`another keel server has held the store's migration lock for more than ${options.lockTimeoutMs ?? 60_000} ms`);
    }
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
  }
  try {
    await options.onLocked?.();
    await client.query('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
    for (const m of migrations) {
      // Read again under the lock: another server may have migrated meanwhile.
      if (!stillToApply(await readVersion(client), m, latest)) continue;
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query('INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)', [m.version, Date.now()]);
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => undefined);
        if (e instanceof StoreError) throw e;
        throw new StoreError(`migration to schema version ${m.version} (${m.description}) failed: ${(e as Error).message}`, { cause: e });
      }
    }
    return await readVersion(client);
  } finally {
    await client.query('SELECT pg_advisory_unlock($1, $2)', [...MIGRATION_LOCK]).catch(() => undefined);
  }
}
