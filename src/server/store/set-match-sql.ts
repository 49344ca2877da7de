/**
 * SQL for "how does a record's set relate to the set asked for", over a child
 * table of (owner key, value) rows. Values are bound as parameters, never spliced;
 * placeholders are `?` (the PostgreSQL store numbers them).
 */
import type { SetMatch } from './types.js';

export interface SetMatchTable {
  /** Child table, its owner column and its value column. */
  readonly table: string;
  readonly ownerColumn: string;
  readonly valueColumn: string;
  /** The owner's key expression in the outer query, e.g. `e.id`. */
  readonly ownerKey: string;
  /** The outer column holding the canonical set key (for exact matches). */
  readonly canonicalColumn: string;
}

export function setMatchSql(
  t: SetMatchTable,
  match: SetMatch,
  values: readonly string[],
  canonicalKey: string,
): { sql: string; params: unknown[] } {
  const distinct = [...new Set(values)];
  const marks = distinct.map(() => '?').join(', ');
  const child = `SELECT 1 FROM ${t.table} c WHERE c.${t.ownerColumn} = ${t.ownerKey}`;
  // `IN ()` is SQLite-only: an empty set is spelled out, with the meaning SQLite gives it.
  if (distinct.length === 0 && match !== 'exact') {
    if (match === 'any') return { sql: '1 = 0', params: [] };
    if (match === 'superset') return { sql: '1 = 1', params: [] };
    return { sql: `NOT EXISTS (${child})`, params: [] };
  }
  switch (match) {
    case 'exact':
      return { sql: `${t.canonicalColumn} = ?`, params: [canonicalKey] };
    case 'any':
      return { sql: `EXISTS (${child} AND c.${t.valueColumn} IN (${marks}))`, params: distinct };
    case 'superset':
      return {
        sql: `(SELECT count(*) FROM ${t.table} c WHERE c.${t.ownerColumn} = ${t.ownerKey} AND c.${t.valueColumn} IN (${marks})) = ?`,
        params: [...distinct, distinct.length],
      };
    case 'subset':
      return { sql: `NOT EXISTS (${child} AND c.${t.valueColumn} NOT IN (${marks}))`, params: distinct };
  }
}
