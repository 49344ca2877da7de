/**
 * The rules every Datastore backend applies before it writes, and the pieces
 * of paging they share, so that SQLite and PostgreSQL refuse the same input
 * with the same typed error.
 */
import { SpiffeId } from '../../spiffe/id.js';
import { ConflictError, InvalidRecordError, NodeBannedError, NodeNotActiveError, NotFoundError } from './errors.js';
import type { NodeRow } from './rows.js';
import { formatSelector } from './selectors.js';
import type { EntryChanges, NodeAttestation, PageRequest, QuoteClock, RegistrationEntry, SvidRef } from './types.js';
import { checkNoNul, normalizeEntry, type NormalizedEntry } from './validate.js';

export const DEFAULT_PAGE = 100;
export const MAX_PAGE = 1000;
export const MAX_JSON_TEXT = 1 << 20;
const HEX64 = /^[0-9a-f]{64}$/;
const HEX = /^[0-9a-f]+$/;
const UINT64_MAX = (1n << 64n) - 1n;
/** A day: a cache (or agent) that falls further behind than this reloads everything. */
export const TOMBSTONE_RETENTION_MS = 24 * 3600 * 1000;

export function encodeCursor(key: string): string {
  return Buffer.from(key, 'utf8').toString('base64url');
}

export function decodeCursor(cursor: string, valid: (key: string) => boolean): string {
  const key = typeof cursor === 'string' ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  if (!valid(key) || encodeCursor(key) !== cursor) throw new InvalidRecordError('cursor', 'not a cursor this store handed out');
  return key;
}

export const isEntryCursor = (k: string): boolean => /^[0-9a-f-]{36}$/.test(k);
export const isNodeCursor = (k: string): boolean => k.startsWith('spiffe://');

export function pageLimit(page: PageRequest | undefined): number {
  const limit = page?.limit ?? DEFAULT_PAGE;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE) {
    throw new InvalidRecordError('limit', `must be a whole number in 1..${MAX_PAGE}`);
  }
  return limit;
}

export function validDate(field: string, d: unknown): Date {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) throw new InvalidRecordError(field, 'not a valid Date');
  return d;
}

export function checkJwks(field: string, text: string): void {
  if (typeof text !== 'string' || text.length > MAX_JSON_TEXT) throw new InvalidRecordError(field, `must be JSON text of at most ${MAX_JSON_TEXT} bytes`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new InvalidRecordError(field, 'is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { keys?: unknown }).keys)) {
    throw new InvalidRecordError(field, 'is not a JWKS (an object with a "keys" list)');
  }
}

export function checkSequence(sequence: number): number {
  if (!Number.isSafeInteger(sequence) || sequence < 0) throw new InvalidRecordError('sequence', 'must be a whole number ≥ 0');
  return sequence;
}

export function checkRefreshHint(refreshHint: number | undefined): number | undefined {
  if (refreshHint !== undefined && (!Number.isSafeInteger(refreshHint) || refreshHint <= 0)) {
    throw new InvalidRecordError('refreshHint', 'must be a whole number of seconds > 0');
  }
  return refreshHint;
}

export function checkAgentId(id: unknown): SpiffeId {
  if (!(id instanceof SpiffeId) || id.isTrustDomainId) throw new InvalidRecordError('agentId', 'not a SPIFFE ID with a path');
  return id;
}

export function checkSvid(svid: SvidRef): SvidRef {
  if (typeof svid?.serial !== 'string' || !HEX.test(svid.serial) || svid.serial.length > 40) {
    throw new InvalidRecordError('svid.serial', 'must be 1-40 lowercase hex digits');
  }
  validDate('svid.notAfter', svid.notAfter);
  return svid;
}

export function checkQuote(q: QuoteClock): QuoteClock {
  if (typeof q?.clock !== 'bigint' || q.clock < 0n || q.clock > UINT64_MAX) throw new InvalidRecordError('quote.clock', 'must be a UINT64 bigint');
  for (const [f, v] of [['quote.resetCount', q.resetCount], ['quote.restartCount', q.restartCount]] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v > 0xffffffff) throw new InvalidRecordError(f, 'must be a UINT32');
  }
  return q;
}

/** The EK hash and AK name of an attestation (the agent ID, selectors, SVID and quote are checked apart). */
export function checkAttestationKeys(a: NodeAttestation): void {
  if (typeof a.ekPublicHash !== 'string' || !HEX64.test(a.ekPublicHash)) {
    throw new InvalidRecordError('ekPublicHash', 'must be 64 lowercase hex digits (SHA-256)');
  }
  if (a.akName !== undefined && (typeof a.akName !== 'string' || !HEX.test(a.akName) || a.akName.length % 2 || a.akName.length > 132)) {
    throw new InvalidRecordError('akName', 'must be lowercase hex of a TPM name');
  }
}

export function checkBanReason(reason: string): string {
  if (typeof reason !== 'string' || reason.trim() === '' || reason.length > 1024) {
    throw new InvalidRecordError('reason', 'a ban needs a reason of 1-1024 characters');
  }
  return checkNoNul('reason', reason);
}

export function checkDriftReason(reason: string): string {
  if (typeof reason !== 'string' || reason.trim() === '' || reason.length > 4096) {
    throw new InvalidRecordError('reason', 'a drift needs a reason of 1-4096 characters');
  }
  return checkNoNul('reason', reason);
}

export function checkCaJournal(serverId: string, json: string): void {
  if (typeof serverId !== 'string' || serverId.length === 0 || serverId.length > 256) {
    throw new InvalidRecordError('serverId', 'must be 1-256 characters');
  }
  checkNoNul('serverId', serverId);
  if (typeof json !== 'string' || json.length > MAX_JSON_TEXT) throw new InvalidRecordError('journal', `must be JSON text of at most ${MAX_JSON_TEXT} bytes`);
  try {
    JSON.parse(json);
  } catch {
    throw new InvalidRecordError('journal', 'is not JSON');
  }
}

/** Returns the expiry in ms. */
export function checkNonce(nonce: string, expiresAt: Date, context: string): number {
  if (typeof nonce !== 'string' || nonce.length < 16 || nonce.length > 512) throw new InvalidRecordError('nonce', 'must be 16-512 characters');
  checkNoNul('nonce', nonce);
  if (typeof context !== 'string' || context.length > 4096) throw new InvalidRecordError('context', 'must be at most 4096 characters');
  checkNoNul('context', context);
  return validDate('expiresAt', expiresAt).getTime();
}

/**
 * The node as stored (read inside the write) must be active to renew or to
 * drift, and still hold `ifSvidSerial` when one is given. `meanwhile` ends the
 * conflict's message.
 */
export function requireActiveNode(row: NodeRow | undefined, id: string, ifSvidSerial: string | undefined, meanwhile = ''): NodeRow {
  if (!row) throw new NotFoundError('node', id);
  if (row.status === 'banned') throw new NodeBannedError(id, row.banned_reason ?? '');
  if (row.status !== 'active') throw new NodeNotActiveError(id, row.status === 'drifted' ? 'drifted' : 'evicted');
  if (ifSvidSerial !== undefined && ifSvidSerial !== row.svid_serial) {
    throw new ConflictError(`${id} no longer holds SVID ${ifSvidSerial}${meanwhile}`, id);
  }
  return row;
}

/** The administrative and policy moves of a node's status, and the status each leads to. */
export const NODE_STATUS_AFTER = { evict: 'evicted', unban: 'evicted', ban: 'banned', drift: 'drifted' } as const;
export type NodeStatusChange = keyof typeof NODE_STATUS_AFTER;

/** Whether `change` may apply to the node as stored (read inside the write); the typed error when not. */
export function checkNodeStatusChange(row: NodeRow | undefined, id: string, change: NodeStatusChange, ifSvidSerial?: string): void {
  if (!row) throw new NotFoundError('node', id);
  if (change === 'evict' && row.status === 'banned') throw new ConflictError(`${id} is banned; unban it instead`, id);
  if (change === 'unban' && row.status !== 'banned') throw new ConflictError(`${id} is not banned`, id);
  if (change === 'drift') requireActiveNode(row, id, ifSvidSerial);
}

/** An existing entry with the changes applied, checked and in canonical form. */
export function mergeEntryChanges(cur: RegistrationEntry, changes: EntryChanges): NormalizedEntry {
  const pick = <K extends keyof EntryChanges>(k: K, current: unknown) => (k in changes ? (changes[k] ?? undefined) : current);
  return normalizeEntry({
    spiffeId: (changes.spiffeId ?? cur.spiffeId) as SpiffeId,
    parentId: (changes.parentId ?? cur.parentId) as SpiffeId,
    selectors: changes.selectors ?? cur.selectors,
    x509SvidTtl: pick('x509SvidTtl', cur.x509SvidTtl) as number | undefined,
    jwtSvidTtl: pick('jwtSvidTtl', cur.jwtSvidTtl) as number | undefined,
    dnsNames: changes.dnsNames ?? cur.dnsNames,
    federatesWith: changes.federatesWith ?? cur.federatesWith,
    admin: changes.admin ?? cur.admin,
    downstream: changes.downstream ?? cur.downstream,
    hint: pick('hint', cur.hint) as string | undefined,
    expiresAt: pick('expiresAt', cur.expiresAt) as Date | undefined,
  });
}

/** The uniqueness rule (SPIFFE ID, parent, selector set), naming the entry already there. */
export function duplicateEntryError(n: NormalizedEntry, existingId: string): ConflictError {
  return new ConflictError(
    `an entry for ${n.spiffeId.toString()} under ${n.parentId.toString()} with selectors ${n.selectors.map(formatSelector).join(', ')} already exists (${existingId})`,
    existingId,
  );
}

/** The column values of an entry in both schemas, in the order of ENTRY_COLUMNS. */
export function entryValues(n: NormalizedEntry): unknown[] {
  return [
    n.spiffeId.toString(),
    n.parentId.toString(),
    n.selectorsKey,
    n.federatesKey,
    n.x509SvidTtl ?? null,
    n.jwtSvidTtl ?? null,
    JSON.stringify(n.dnsNames),
    n.admin ? 1 : 0,
    n.downstream ? 1 : 0,
    n.hint ?? null,
    n.expiresAt?.getTime() ?? null,
  ];
}
