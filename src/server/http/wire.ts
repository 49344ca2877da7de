/**
 * The JSON the admin API speaks: registration entries and attested nodes as
 * plain objects (selectors as `type:value` strings, times as RFC 3339, TTLs
 * in seconds), and the zod schemas that read requests back into store types.
 */
import { z } from 'zod';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import {
  formatSelector,
  MAX_SVID_TTL_SECONDS,
  parseSelector,
  type AttestedNode,
  type EntryChanges,
  type EntryFilter,
  type EntryInput,
  type NodeFilter,
  type PageRequest,
  type RegistrationEntry,
  type Selector,
} from '../store/index.js';
import { validationProblem, type FieldError } from './problem.js';

// ── output ──────────────────────────────────────────────────────────────────

export interface EntryJson {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: string[];
  x509SvidTtl?: number;
  jwtSvidTtl?: number;
  dnsNames: string[];
  federatesWith: string[];
  admin: boolean;
  downstream: boolean;
  hint?: string;
  expiresAt?: string;
  revision: number;
  createdAt: string;
  updatedAt: string;
}

export function entryToJson(e: RegistrationEntry): EntryJson {
  return {
    id: e.id,
    spiffeId: e.spiffeId.toString(),
    parentId: e.parentId.toString(),
    selectors: e.selectors.map(formatSelector),
    ...(e.x509SvidTtl !== undefined ? { x509SvidTtl: e.x509SvidTtl } : {}),
    ...(e.jwtSvidTtl !== undefined ? { jwtSvidTtl: e.jwtSvidTtl } : {}),
    dnsNames: [...e.dnsNames],
    federatesWith: e.federatesWith.map((t) => t.name),
    admin: e.admin,
    downstream: e.downstream,
    ...(e.hint !== undefined ? { hint: e.hint } : {}),
    ...(e.expiresAt !== undefined ? { expiresAt: e.expiresAt.toISOString() } : {}),
    revision: e.revision,
    createdAt: e.createdAt.toISOString(),
    updatedAt: e.updatedAt.toISOString(),
  };
}

export type NodeStatusJson =
  | { kind: 'active'; svid: { serial: string; notAfter: string } }
  | { kind: 'evicted'; since: string }
  | { kind: 'banned'; since: string; reason: string }
  | { kind: 'drifted'; since: string; reason: string };

export interface AgentJson {
  agentId: string;
  attestationType: 'tpm';
  ekPublicHash: string;
  akName?: string;
  selectors: string[];
  status: NodeStatusJson;
  /** TPMS_CLOCK_INFO of the last quote; the clock as a decimal string (64-bit). */
  lastQuote: { clock: string; resetCount: number; restartCount: number };
  firstSeen: string;
  lastSeen: string;
  revision: number;
}

export function agentToJson(n: AttestedNode): AgentJson {
  const s = n.status;
  const status: NodeStatusJson =
    s.kind === 'active'
      ? { kind: 'active', svid: { serial: s.svid.serial, notAfter: s.svid.notAfter.toISOString() } }
      : s.kind === 'evicted'
        ? { kind: 'evicted', since: s.since.toISOString() }
        : { kind: s.kind, since: s.since.toISOString(), reason: s.reason };
  return {
    agentId: n.agentId.toString(),
    attestationType: n.attestationType,
    ekPublicHash: n.ekPublicHash,
    ...(n.akName !== undefined ? { akName: n.akName } : {}),
    selectors: n.selectors.map(formatSelector),
    status,
    lastQuote: { clock: n.lastQuote.clock.toString(), resetCount: n.lastQuote.resetCount, restartCount: n.lastQuote.restartCount },
    firstSeen: n.firstSeen.toISOString(),
    lastSeen: n.lastSeen.toISOString(),
    revision: n.revision,
  };
}

// ── input ───────────────────────────────────────────────────────────────────

/** JSON pointer (RFC 6901) of a zod issue path. */
export function jsonPointer(path: readonly PropertyKey[]): string {
  return path.map((p) => '/' + String(p).replace(/~/g, '~0').replace(/\//g, '~1')).join('');
}

/**
 * Where an input came from, and how its error paths read: a JSON pointer into
 * the body (`/selectors/1`), `?name` for a query parameter, `:name` for a path parameter.
 */
export type InputPart = 'body' | 'query' | 'path';

function issuePath(where: InputPart, path: readonly PropertyKey[]): string {
  if (where === 'body' || path.length === 0) return jsonPointer(path);
  const [first, ...rest] = path;
  return `${where === 'query' ? '?' : ':'}${String(first)}${jsonPointer(rest)}`;
}

/** Parses with `schema` or throws a validation problem listing every issue with its path. */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown, where: InputPart = 'body'): z.output<S> {
  const r = schema.safeParse(input);
  if (r.success) return r.data;
  const errors: FieldError[] = r.error.issues.flatMap((i) =>
    // One error per unknown member, at the member itself, so a typo is pointed at.
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => ({ path: issuePath(where, [...i.path, k]), message: `unknown member ${JSON.stringify(k)}` }))
      : [{ path: issuePath(where, i.path), message: i.message }],
  );
  throw validationProblem(errors, `the request ${where === 'body' ? 'body' : where === 'query' ? 'query' : 'path'} is not valid`);
}

const MAX_DNS_NAMES = 32;
const MAX_SELECTORS = 64;
const MAX_FEDERATES = 64;
/** Batch size cap: one request stays well under the body limit and one transaction. */
export const MAX_BATCH = 500;

/** A SPIFFE ID of this trust domain, with a path. */
export function spiffeIdIn(td: TrustDomain) {
  return z.string().transform((v, ctx) => {
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
    if (!id.memberOf(td)) {
      ctx.addIssue({ code: 'custom', message: `${v} is not in trust domain ${td.name}` });
      return z.NEVER;
    }
    if (id.isTrustDomainId) {
      ctx.addIssue({ code: 'custom', message: `${v} has no path` });
      return z.NEVER;
    }
    return id;
  });
}

export const trustDomainName = z.string().transform((v, ctx) => {
  try {
    return TrustDomain.parse(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

const selector = z.string().transform((v, ctx): Selector => {
  try {
    return parseSelector(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

const ttl = z.number().int().min(1).max(MAX_SVID_TTL_SECONDS);
const timestamp = z.iso.datetime({ offset: true }).transform((v) => new Date(v));
const hint = z.string().max(1024);
export const setMatch = z.enum(['exact', 'subset', 'superset', 'any']);

export function entrySchemas(td: TrustDomain) {
  const id = spiffeIdIn(td);
  const federatesWith = z
    .array(trustDomainName)
    .max(MAX_FEDERATES)
    .superRefine((tds, ctx) => {
      tds.forEach((t, i) => {
        if (t.equals(td)) ctx.addIssue({ code: 'custom', path: [i], message: `an entry does not federate with its own trust domain ${td.name}` });
      });
    });
  const create = z.strictObject({
    id: z.string().optional(),
    spiffeId: id,
    parentId: id,
    selectors: z.array(selector).min(1).max(MAX_SELECTORS),
    x509SvidTtl: ttl.optional(),
    jwtSvidTtl: ttl.optional(),
    dnsNames: z.array(z.string()).max(MAX_DNS_NAMES).optional(),
    federatesWith: federatesWith.optional(),
    admin: z.boolean().optional(),
    downstream: z.boolean().optional(),
    hint: hint.optional(),
    expiresAt: timestamp.optional(),
  });
  const update = z
    .strictObject({
      spiffeId: id.optional(),
      parentId: id.optional(),
      selectors: z.array(selector).min(1).max(MAX_SELECTORS).optional(),
      x509SvidTtl: ttl.nullable().optional(),
      jwtSvidTtl: ttl.nullable().optional(),
      dnsNames: z.array(z.string()).max(MAX_DNS_NAMES).optional(),
      federatesWith: federatesWith.optional(),
      admin: z.boolean().optional(),
      downstream: z.boolean().optional(),
      hint: hint.nullable().optional(),
      expiresAt: timestamp.nullable().optional(),
      /** Compare-and-set: refused with 409 when the entry changed since this revision. */
      ifRevision: z.number().int().min(0).optional(),
    })
    .refine((u) => Object.keys(u).some((k) => k !== 'ifRevision'), 'nothing to change');
  return {
    create,
    batchCreate: z.strictObject({ entries: z.array(create).min(1).max(MAX_BATCH) }),
    update,
    batchDelete: z.strictObject({ ids: z.array(z.string()).min(1).max(MAX_BATCH) }),
  };
}

export function toEntryInput(v: z.output<ReturnType<typeof entrySchemas>['create']>): EntryInput {
  // exactOptionalPropertyTypes-friendly: only the fields that were given.
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined)) as unknown as EntryInput;
}

export function toEntryChanges(v: z.output<ReturnType<typeof entrySchemas>['update']>): { changes: EntryChanges; ifRevision: number | undefined } {
  const { ifRevision, ...rest } = v;
  const changes = Object.fromEntries(Object.entries(rest).filter(([, x]) => x !== undefined)) as EntryChanges;
  return { changes, ifRevision };
}

/** A query parameter given once or repeated. */
const many = <T extends z.ZodType>(item: T) => z.preprocess((v) => (v === undefined ? undefined : Array.isArray(v) ? v : [v]), z.array(item).optional());
/** A query parameter given at most once. */
const one = <T extends z.ZodType>(item: T) => z.preprocess((v) => (Array.isArray(v) && v.length === 1 ? v[0] : v), item);

const page = {
  cursor: one(z.string().max(1024).optional()),
  limit: one(z.coerce.number().int().min(1).max(1000).optional()),
};

export function entryListQuery(td: TrustDomain) {
  return z
    .strictObject({
      parentId: one(spiffeIdIn(td).optional()),
      spiffeId: one(spiffeIdIn(td).optional()),
      selector: many(selector),
      selectorMatch: one(setMatch.default('superset')),
      federatesWith: many(trustDomainName),
      federatesWithMatch: one(setMatch.default('superset')),
      hint: one(hint.optional()),
      downstream: one(z.enum(['true', 'false']).optional()),
      ...page,
    })
    .transform((q): { filter: EntryFilter; page: PageRequest } => ({
      filter: {
        ...(q.parentId ? { parentId: q.parentId } : {}),
        ...(q.spiffeId ? { spiffeId: q.spiffeId } : {}),
        ...(q.selector?.length ? { selectors: { match: q.selectorMatch, selectors: q.selector } } : {}),
        ...(q.federatesWith?.length ? { federatesWith: { match: q.federatesWithMatch, trustDomains: q.federatesWith } } : {}),
        ...(q.hint !== undefined ? { hint: q.hint } : {}),
        ...(q.downstream !== undefined ? { downstream: q.downstream === 'true' } : {}),
      },
      page: { ...(q.cursor !== undefined ? { cursor: q.cursor } : {}), ...(q.limit !== undefined ? { limit: q.limit } : {}) },
    }));
}

export const agentListQuery = z
  .strictObject({
    status: one(z.enum(['active', 'evicted', 'banned', 'drifted']).optional()),
    selector: many(selector),
    selectorMatch: one(setMatch.default('superset')),
    ...page,
  })
  .transform((q): { filter: NodeFilter; page: PageRequest } => ({
    filter: {
      ...(q.status ? { status: q.status } : {}),
      ...(q.selector?.length ? { selectors: { match: q.selectorMatch, selectors: q.selector } } : {}),
    },
    page: { ...(q.cursor !== undefined ? { cursor: q.cursor } : {}), ...(q.limit !== undefined ? { limit: q.limit } : {}) },
  }));

export const banBody = z.strictObject({ reason: z.string().min(1).max(1024) });
