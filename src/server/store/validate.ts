/**
 * Checks an entry before it is written and brings it to canonical form
 * (sorted, de-duplicated sets), so that the uniqueness rule compares like with like.
 */
import { dnsNameProblem } from '../../spiffe/dns-name.js';
import { randomUUID } from 'node:crypto';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { InvalidRecordError } from './errors.js';
import { isServerId } from './node-groups.js';
import { normalizeSelectors, selectorSetKey, type Selector } from './selectors.js';
import type { EntryId, EntryInput } from './types.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A year: longer-lived SVIDs defeat the point of short-lived identity. */
export const MAX_SVID_TTL_SECONDS = 365 * 24 * 3600;
const MAX_HINT_LENGTH = 1024;

export interface NormalizedEntry {
  readonly spiffeId: SpiffeId;
  readonly parentId: SpiffeId;
  readonly selectors: readonly Selector[];
  readonly selectorsKey: string;
  readonly x509SvidTtl: number | undefined;
  readonly jwtSvidTtl: number | undefined;
  readonly dnsNames: readonly string[];
  readonly federatesWith: readonly TrustDomain[];
  readonly federatesKey: string;
  readonly admin: boolean;
  readonly downstream: boolean;
  readonly hint: string | undefined;
  readonly expiresAt: Date | undefined;
}

export function entryIdFrom(id: string | undefined): EntryId {
  if (id === undefined) return randomUUID() as EntryId;
  if (typeof id !== 'string' || !UUID_RE.test(id)) throw new InvalidRecordError('id', `${JSON.stringify(id)} is not a lowercase UUID`);
  return id as EntryId;
}

function ttl(field: string, v: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isSafeInteger(v) || v <= 0 || v > MAX_SVID_TTL_SECONDS) {
    throw new InvalidRecordError(field, `must be a whole number of seconds in 1..${MAX_SVID_TTL_SECONDS}, got ${String(v)}`);
  }
  return v;
}

function spiffeId(field: string, v: unknown): SpiffeId {
  if (!(v instanceof SpiffeId)) throw new InvalidRecordError(field, 'not a SpiffeId');
  if (v.isTrustDomainId) throw new InvalidRecordError(field, `${v.toString()} has no path`);
  return v;
}

/** Text the store keeps must be storable by every backend: PostgreSQL's text cannot hold U+0000. */
export function checkNoNul(field: string, text: string): string {
  if (text.includes('\u0000')) throw new InvalidRecordError(field, 'contains a NUL character');
  return text;
}

const RESERVED_PREFIX = '/keel/';
const AGENT_ID_SHAPE = '/keel/agent/tpm/<64 hex digits>';
const AGENT_ID_PATH = /^\/keel\/agent\/tpm\/[0-9a-f]{64}$/;

function isReserved(id: SpiffeId): boolean {
  return id.path === '/keel' || id.path.startsWith(RESERVED_PREFIX);
}

export function normalizeEntry(input: Omit<EntryInput, 'id'>): NormalizedEntry {
  const sid = spiffeId('spiffeId', input.spiffeId);
  const pid = spiffeId('parentId', input.parentId);
  if (!sid.trustDomain.equals(pid.trustDomain)) {
    throw new InvalidRecordError('parentId', `${pid.toString()} is not in the trust domain of ${sid.toString()}`);
  }
  if (isServerId(sid)) throw new InvalidRecordError('spiffeId', `${sid.toString()} is the server's own ID`);
  // /keel/ is keel's own namespace: a workload holding an agent's ID could call the Node API as that node.
  if (isReserved(sid)) throw new InvalidRecordError('spiffeId', `${sid.toString()} is in keel's reserved namespace ${RESERVED_PREFIX}: agent and server IDs are issued by attestation only`);
  if (isReserved(pid) && !isServerId(pid) && !AGENT_ID_PATH.test(pid.path)) {
    throw new InvalidRecordError('parentId', `${pid.toString()} is in keel's reserved namespace ${RESERVED_PREFIX} and is neither the server nor an agent ID (${AGENT_ID_SHAPE})`);
  }
  const selectors = normalizeSelectors(input.selectors);
  if (selectors.length === 0) throw new InvalidRecordError('selectors', 'an entry needs at least one selector');

  const dnsNames = [...new Set(input.dnsNames ?? [])];
  for (const n of dnsNames) {
    const p = dnsNameProblem(n);
    if (p) throw new InvalidRecordError('dnsNames', `${JSON.stringify(n)}: ${p}`);
  }
  const fed = new Map<string, TrustDomain>();
  for (const td of input.federatesWith ?? []) {
    if (!(td instanceof TrustDomain)) throw new InvalidRecordError('federatesWith', 'not a TrustDomain');
    if (td.equals(sid.trustDomain)) throw new InvalidRecordError('federatesWith', `an entry does not federate with its own trust domain ${td.name}`);
    fed.set(td.name, td);
  }
  const federatesWith = [...fed.keys()].sort().map((k) => fed.get(k)!);

  const hint = input.hint === undefined || input.hint === '' ? undefined : input.hint;
  if (hint !== undefined && (typeof hint !== 'string' || hint.length > MAX_HINT_LENGTH)) {
    throw new InvalidRecordError('hint', `must be a string of at most ${MAX_HINT_LENGTH} characters`);
  }
  if (hint !== undefined) checkNoNul('hint', hint);
  const expiresAt = input.expiresAt;
  if (expiresAt !== undefined && (!(expiresAt instanceof Date) || Number.isNaN(expiresAt.getTime()))) {
    throw new InvalidRecordError('expiresAt', 'not a valid Date');
  }
  for (const [field, v] of [['admin', input.admin], ['downstream', input.downstream]] as const) {
    if (v !== undefined && typeof v !== 'boolean') throw new InvalidRecordError(field, 'not a boolean');
  }
  return {
    spiffeId: sid,
    parentId: pid,
    selectors,
    selectorsKey: selectorSetKey(selectors),
    x509SvidTtl: ttl('x509SvidTtl', input.x509SvidTtl),
    jwtSvidTtl: ttl('jwtSvidTtl', input.jwtSvidTtl),
    dnsNames,
    federatesWith,
    federatesKey: JSON.stringify(federatesWith.map((t) => t.name)),
    admin: input.admin ?? false,
    downstream: input.downstream ?? false,
    hint,
    expiresAt,
  };
}
