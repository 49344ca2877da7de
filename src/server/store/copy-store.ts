/**
 * Copies an SQLite store into a PostgreSQL one, row for row: the two schemas
 * have the same tables and columns at the same version, so every record
 * keeps its revision, its timestamps and its state (a banned node stays
 * banned, a deleted entry's tombstone stays), and so does the store revision.
 *
 * One transaction on the target, which must be empty: it takes the store's
 * write lock first (the store_revision row, as every write does), so a server
 * already running on the target waits, then sees the whole copy at once (it
 * is told through the change feed).
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { StoreError } from './errors.js';
import { LATEST_SCHEMA_VERSION } from './migrations.js';
import { clientConfig, type PostgresConnectionOptions } from './pg-connection.js';
import { migratePostgres, PG_LATEST_SCHEMA_VERSION } from './pg-migrations.js';
import { CHANGE_CHANNEL } from './postgres-datastore.js';
import { SqliteDatastore } from './sqlite-datastore.js';

/** In an order that satisfies the foreign keys. */
export const COPIED_TABLES = [
  'entries',
  'entry_selectors',
  'entry_federates_with',
  'entry_tombstones',
  'nodes',
  'node_selectors',
  'bundles',
  'ca_journals',
  'nonces',
] as const;

export interface CopyReport {
  readonly rows: Readonly<Record<(typeof COPIED_TABLES)[number], number>>;
  readonly revision: number;
}

const CHUNK = 500;

export async function copySqliteToPostgres(sqlitePath: string, target: PostgresConnectionOptions): Promise<CopyReport> {
  if (LATEST_SCHEMA_VERSION !== PG_LATEST_SCHEMA_VERSION) {
    throw new StoreError(`this keel's SQLite schema (${LATEST_SCHEMA_VERSION}) and PostgreSQL schema (${PG_LATEST_SCHEMA_VERSION}) differ`);
  }
  // Bring both to the latest schema with the stores' own migrations.
  await (SqliteDatastore.open({ path: sqlitePath, busyTimeoutMs: 10_000 })).close();

  const src = new Database(sqlitePath, { readonly: true, fileMustExist: true });
  const { max: _max, ...config } = clientConfig(target);
  const dst = new pg.Client(config);
  try {
    await dst.connect();
    await migratePostgres(dst);
    await dst.query('BEGIN');
    try {
      const head = (await dst.query<{ revision: number }>('SELECT revision FROM store_revision WHERE id = 1 FOR UPDATE')).rows[0];
      const used: string[] = [];
      for (const t of COPIED_TABLES) {
        const n = (await dst.query<{ n: number }>(`SELECT count(*) AS n FROM ${t}`)).rows[0]!.n;
        if (Number(n) > 0) used.push(`${t} (${n})`);
      }
      if (Number(head?.revision ?? 0) > 0 || used.length) {
        throw new StoreError(`the target database is not empty (revision ${head?.revision ?? 0}${used.length ? `; ${used.join(', ')}` : ''}): nothing copied`);
      }
      // One read transaction on the source: a consistent snapshot even if a server still writes to it.
      const snapshot = src.transaction(() => ({
        rev: src.prepare('SELECT revision, entries_revision, tombstone_floor FROM store_revision WHERE id = 1').get() as {
          revision: number;
          entries_revision: number;
          tombstone_floor: number;
        },
        tables: COPIED_TABLES.map((t) => [t, src.prepare(`SELECT * FROM ${t}`).all() as Record<string, unknown>[]] as const),
      }));
      const { rev, tables } = snapshot.deferred();
      const rows = {} as Record<(typeof COPIED_TABLES)[number], number>;
      for (const [t, list] of tables) {
        rows[t] = list.length;
        if (!list.length) continue;
        const cols = Object.keys(list[0]!);
        for (let i = 0; i < list.length; i += CHUNK) {
          const chunk = list.slice(i, i + CHUNK);
          const params: unknown[] = [];
          const tuples = chunk.map((r) => `(${cols.map((c) => `$${params.push(r[c] ?? null)}`).join(', ')})`);
          await dst.query(`INSERT INTO ${t} (${cols.join(', ')}) VALUES ${tuples.join(', ')}`, params);
        }
      }
      await dst.query('UPDATE store_revision SET revision = $1, entries_revision = $2, tombstone_floor = $3 WHERE id = 1', [
        rev.revision,
        rev.entries_revision,
        rev.tombstone_floor,
      ]);
      for (const kind of ['entries', 'nodes', 'bundles']) await dst.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, `migrate-store ${kind} ${rev.revision}`]);
      await dst.query('COMMIT');
      return { rows, revision: rev.revision };
    } catch (e) {
      await dst.query('ROLLBACK').catch(() => undefined);
      throw e;
    }
  } catch (e) {
    if (e instanceof StoreError) throw e;
    throw new StoreError(`copying the store failed: ${(e as Error).message}`, { cause: e });
  } finally {
    src.close();
    await dst.end().catch(() => undefined);
  }
}
