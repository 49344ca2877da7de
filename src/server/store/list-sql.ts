/**
 * The paged listing queries, the same for every backend: the filters as a
 * WHERE over `?` placeholders (the PostgreSQL store numbers them), keyset
 * paging on the primary key, and one row past the page to tell whether there
 * is a next one. Each backend only runs the SQL and decodes its rows.
 */
import { decodeCursor, encodeCursor, isEntryCursor, isNodeCursor, pageLimit, validDate } from './checks.js';
import { formatSelector, normalizeSelectors, selectorSetKey, type Selector } from './selectors.js';
import { setMatchSql, type SetMatchTable } from './set-match-sql.js';
import type { EntryFilter, NodeFilter, Page, PageRequest, SetMatch } from './types.js';

export interface ListQuery {
  readonly sql: string;
  /** The parameters, the page's LIMIT (one past the page) last. */
  readonly params: readonly unknown[];
  readonly limit: number;
}

class Where {
  readonly clauses: string[] = [];
  readonly params: unknown[] = [];

  add(clause: string, ...params: unknown[]): void {
    this.clauses.push(clause);
    this.params.push(...params);
  }

  query(select: string, key: string, limit: number): ListQuery {
    const where = this.clauses.length ? `WHERE ${this.clauses.join(' AND ')} ` : '';
    return { sql: `${select} ${where}ORDER BY ${key} LIMIT ?`, params: [...this.params, limit + 1], limit };
  }
}

function selectorMatch(where: Where, t: SetMatchTable, f: { readonly match: SetMatch; readonly selectors: readonly Selector[] }): void {
  const sel = normalizeSelectors(f.selectors, 'filter.selectors');
  const m = setMatchSql(t, f.match, sel.map(formatSelector), selectorSetKey(sel));
  where.add(m.sql, ...m.params);
}

export function entryListQuery(filter: EntryFilter, page: PageRequest | undefined): ListQuery {
  const limit = pageLimit(page);
  const where = new Where();
  if (page?.cursor !== undefined) where.add('e.id > ?', decodeCursor(page.cursor, isEntryCursor));
  if (filter.parentId) where.add('e.parent_id = ?', filter.parentId.toString());
  if (filter.spiffeId) where.add('e.spiffe_id = ?', filter.spiffeId.toString());
  if (filter.hint !== undefined) where.add('e.hint = ?', filter.hint);
  if (filter.downstream !== undefined) where.add('e.downstream = ?', filter.downstream ? 1 : 0);
  if (filter.selectors) {
    selectorMatch(
      where,
      { table: 'entry_selectors', ownerColumn: 'entry_id', valueColumn: 'selector', ownerKey: 'e.id', canonicalColumn: 'e.selectors_key' },
      filter.selectors,
    );
  }
  if (filter.federatesWith) {
    const names = [...new Set(filter.federatesWith.trustDomains.map((t) => t.name))].sort();
    const m = setMatchSql(
      { table: 'entry_federates_with', ownerColumn: 'entry_id', valueColumn: 'trust_domain', ownerKey: 'e.id', canonicalColumn: 'e.federates_key' },
      filter.federatesWith.match,
      names,
      JSON.stringify(names),
    );
    where.add(m.sql, ...m.params);
  }
  return where.query('SELECT e.* FROM entries e', 'e.id', limit);
}

export function nodeListQuery(filter: NodeFilter, page: PageRequest | undefined): ListQuery {
  const limit = pageLimit(page);
  const where = new Where();
  if (page?.cursor !== undefined) where.add('n.agent_id > ?', decodeCursor(page.cursor, isNodeCursor));
  if (filter.status !== undefined) where.add('n.status = ?', filter.status);
  if (filter.lastSeenBefore !== undefined) where.add('n.last_seen < ?', validDate('lastSeenBefore', filter.lastSeenBefore).getTime());
  if (filter.selectors) {
    selectorMatch(
      where,
      { table: 'node_selectors', ownerColumn: 'agent_id', valueColumn: 'selector', ownerKey: 'n.agent_id', canonicalColumn: 'n.selectors_key' },
      filter.selectors,
    );
  }
  return where.query('SELECT n.* FROM nodes n', 'n.agent_id', limit);
}

/** The page out of the rows a ListQuery returned (up to limit + 1); the cursor is the last item's key. */
export function pageOf<R, T>(rows: readonly R[], limit: number, decode: (row: R) => T, key: (item: T) => string): Page<T> {
  const items = rows.slice(0, limit).map(decode);
  return { items, nextCursor: rows.length > limit ? encodeCursor(key(items[items.length - 1]!)) : undefined };
}
