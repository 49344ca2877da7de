/**
 * The SQLite schema, as numbered migrations. Each runs in its own IMMEDIATE
 * transaction together with the version bump, so a crash leaves the database
 * at a whole version, and two processes opening a fresh file cannot both migrate.
 */
import type { Database } from 'better-sqlite3';
import { SchemaTooNewError, StoreError } from './errors.js';

export interface Migration {
  readonly version: number;
  readonly description: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'entries, nodes, bundles, CA journals, nonces, store revision',
    sql: `
      CREATE TABLE store_revision (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        revision INTEGER NOT NULL,
        -- the revision of the last entry change: the authorized-entries cache keys on it
        entries_revision INTEGER NOT NULL,
        -- tombstones up to this revision were pruned: a reader older than it must reload everything
        tombstone_floor INTEGER NOT NULL
      );
      INSERT INTO store_revision (id, revision, entries_revision, tombstone_floor) VALUES (1, 0, 0, 0);

      CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors_key TEXT NOT NULL,      -- JSON list of sorted "type:value"
        federates_key TEXT NOT NULL,      -- JSON list of sorted trust domain names
        x509_svid_ttl INTEGER CHECK (x509_svid_ttl > 0),
        jwt_svid_ttl INTEGER CHECK (jwt_svid_ttl > 0),
        dns_names TEXT NOT NULL,          -- JSON list
        admin INTEGER NOT NULL CHECK (admin IN (0, 1)),
        downstream INTEGER NOT NULL CHECK (downstream IN (0, 1)),
        hint TEXT,
        expires_at INTEGER,
        revision INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (spiffe_id, parent_id, selectors_key)
      );
      CREATE INDEX entries_by_parent ON entries (parent_id);
      CREATE INDEX entries_by_spiffe_id ON entries (spiffe_id);
      CREATE INDEX entries_by_revision ON entries (revision);

      -- one row per selector / federated trust domain, for the set filters
      CREATE TABLE entry_selectors (
        entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        selector TEXT NOT NULL,
        PRIMARY KEY (entry_id, selector)
      ) WITHOUT ROWID;
      CREATE INDEX entry_selectors_by_selector ON entry_selectors (selector, entry_id);
      CREATE TABLE entry_federates_with (
        entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
        trust_domain TEXT NOT NULL,
        PRIMARY KEY (entry_id, trust_domain)
      ) WITHOUT ROWID;
      CREATE INDEX entry_federates_with_by_td ON entry_federates_with (trust_domain, entry_id);

      -- deleted entries, so that caches (and agent sync) can follow changes since a revision
      CREATE TABLE entry_tombstones (
        id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        deleted_at INTEGER NOT NULL
      );
      CREATE INDEX entry_tombstones_by_revision ON entry_tombstones (revision);
      CREATE INDEX entry_tombstones_by_time ON entry_tombstones (deleted_at);

      CREATE TABLE nodes (
        agent_id TEXT PRIMARY KEY,
        ek_public_hash TEXT NOT NULL UNIQUE,
        ak_name TEXT,
        attestation_type TEXT NOT NULL CHECK (attestation_type = 'tpm'),
        selectors_key TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'evicted', 'banned')),
        status_since INTEGER NOT NULL,
        banned_reason TEXT,
        svid_serial TEXT,
        svid_not_after INTEGER,
        quote_clock TEXT NOT NULL,        -- decimal UINT64
        quote_reset_count INTEGER NOT NULL,
        quote_restart_count INTEGER NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        -- an active node, and only an active node, holds an SVID; only a banned one has a reason
        CHECK ((status = 'active') = (svid_serial IS NOT NULL AND svid_not_after IS NOT NULL)),
        CHECK ((status = 'banned') = (banned_reason IS NOT NULL))
      );
      CREATE TABLE node_selectors (
        agent_id TEXT NOT NULL REFERENCES nodes (agent_id) ON DELETE CASCADE,
        selector TEXT NOT NULL,
        PRIMARY KEY (agent_id, selector)
      ) WITHOUT ROWID;
      CREATE INDEX node_selectors_by_selector ON node_selectors (selector, agent_id);

      CREATE TABLE bundles (
        trust_domain TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('own', 'federated')),
        jwks TEXT NOT NULL,
        sequence INTEGER,
        refresh_hint INTEGER,
        updated_at INTEGER NOT NULL,
        CHECK ((kind = 'own') = (sequence IS NOT NULL))
      );

      CREATE TABLE ca_journals (
        server_id TEXT PRIMARY KEY,
        journal TEXT NOT NULL,
        updated_at INTEGER NOT NULL
      );

      CREATE TABLE nonces (
        nonce TEXT PRIMARY KEY,
        context TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
      ) WITHOUT ROWID;
      CREATE INDEX nonces_by_expiry ON nonces (expires_at);
    `,
  },
  {
    version: 2,
    description: "nodes: status 'drifted' (out of firmware policy at a continuous attestation), with its reason",
    // SQLite cannot change a CHECK in place: the table is rebuilt (foreign keys
    // are off while migrations run, so node_selectors keeps its rows).
    sql: `
      CREATE TABLE nodes_v2 (
        agent_id TEXT PRIMARY KEY,
        ek_public_hash TEXT NOT NULL UNIQUE,
        ak_name TEXT,
        attestation_type TEXT NOT NULL CHECK (attestation_type = 'tpm'),
        selectors_key TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'evicted', 'banned', 'drifted')),
        status_since INTEGER NOT NULL,
        banned_reason TEXT,               -- the reason of a ban, or of a drift
        svid_serial TEXT,
        svid_not_after INTEGER,
        quote_clock TEXT NOT NULL,
        quote_reset_count INTEGER NOT NULL,
        quote_restart_count INTEGER NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        CHECK ((status = 'active') = (svid_serial IS NOT NULL AND svid_not_after IS NOT NULL)),
        CHECK ((status IN ('banned', 'drifted')) = (banned_reason IS NOT NULL))
      );
      INSERT INTO nodes_v2 SELECT agent_id, ek_public_hash, ak_name, attestation_type, selectors_key, status, status_since,
        banned_reason, svid_serial, svid_not_after, quote_clock, quote_reset_count, quote_restart_count, first_seen,
        last_seen, revision FROM nodes;
      DROP TABLE nodes;
      ALTER TABLE nodes_v2 RENAME TO nodes;
    `,
  },
];

export const LATEST_SCHEMA_VERSION = latestVersion(MIGRATIONS);

/** The version the last of `migrations` brings a database to (0 for none). */
export function latestVersion(migrations: readonly Migration[]): number {
  return migrations.length ? migrations[migrations.length - 1]!.version : 0;
}

/**
 * Read under the migration lock, with the database at version `now`: whether
 * `m` is still to apply. Throws SchemaTooNewError for a database from a newer
 * keel, StoreError for a gap. The rule of both backends.
 */
export function stillToApply(now: number, m: Migration, latest: number): boolean {
  if (now > latest) throw new SchemaTooNewError(now, latest);
  if (now >= m.version) return false;
  if (now !== m.version - 1) throw new StoreError(`schema version ${now} cannot be migrated to ${m.version}`);
  return true;
}

function readVersion(db: Database): number {
  const row = db.prepare('SELECT max(version) AS v FROM schema_version').get() as { v: number | null };
  return row.v ?? 0;
}

/** Brings the database to the latest version; refuses one from a newer keel. */
export function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): number {
  const latest = latestVersion(migrations);
  db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
  const found = readVersion(db);
  if (found > latest) throw new SchemaTooNewError(found, latest);
  if (found >= latest) return found;
  // Table rebuilds must not cascade into the tables that reference them; the
  // pragma has no effect inside a transaction, so it is set around them.
  const fk = db.pragma('foreign_keys', { simple: true }) as number;
  db.pragma('foreign_keys = OFF');
  try {
    runMigrations(db, migrations, latest);
    const broken = db.pragma('foreign_key_check') as { table: string; parent: string }[];
    if (broken.length) {
      const where = [...new Set(broken.map((b) => `${b.table} → ${b.parent}`))].join(', ');
      throw new StoreError(`the migrated database breaks ${broken.length} foreign key(s): ${where}`);
    }
  } finally {
    if (fk) db.pragma('foreign_keys = ON');
  }
  return readVersion(db);
}

function runMigrations(db: Database, migrations: readonly Migration[], latest: number): void {
  for (const m of migrations) {
    const step = db.transaction(() => {
      // Re-read under the write lock: another process may have migrated meanwhile.
      if (!stillToApply(readVersion(db), m, latest)) return;
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(m.version, Date.now());
    });
    step.immediate();
  }
}
