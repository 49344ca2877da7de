/**
 * Rows of the SQLite tables and their mapping to records. Reading trusts
 * nothing: a row that does not parse back is reported as a corrupt store.
 */
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { StoreError } from './errors.js';
import { parseSelector, type Selector } from './selectors.js';
import type { AttestedNode, EntryId, FederatedBundle, NodeStatus, OwnBundle, RegistrationEntry } from './types.js';

export interface EntryRow {
  id: string;
  spiffe_id: string;
  parent_id: string;
  selectors_key: string;
  federates_key: string;
  x509_svid_ttl: number | null;
  jwt_svid_ttl: number | null;
  dns_names: string;
  admin: number;
  downstream: number;
  hint: string | null;
  expires_at: number | null;
  revision: number;
  created_at: number;
  updated_at: number;
}

export interface NodeRow {
  agent_id: string;
  ek_public_hash: string;
  ak_name: string | null;
  attestation_type: string;
  selectors_key: string;
  status: string;
  status_since: number;
  banned_reason: string | null;
  svid_serial: string | null;
  svid_not_after: number | null;
  quote_clock: string;
  quote_reset_count: number;
  quote_restart_count: number;
  first_seen: number;
  last_seen: number;
  revision: number;
}

export interface BundleRow {
  trust_domain: string;
  kind: string;
  jwks: string;
  sequence: number | null;
  refresh_hint: number | null;
  updated_at: number;
}

function corrupt(what: string, cause: unknown): StoreError {
  return new StoreError(`corrupt row in the store: ${what}`, { cause });
}

/** Bound on each memo map; past it the map starts over (memory stays flat under churn). */
const MEMO_LIMIT = 50_000;

function memo<V>(map: Map<string, V>, key: string, make: () => V): V {
  let v = map.get(key);
  if (v === undefined) {
    if (map.size >= MEMO_LIMIT) map.clear();
    map.set(key, (v = make()));
  }
  return v;
}

/** Parses stored strings once per distinct value: a rebuild of 10,000 entries repeats parents a lot. */
export class RowDecoder {
  private readonly ids = new Map<string, SpiffeId>();
  private readonly tds = new Map<string, TrustDomain>();
  private readonly selectorSets = new Map<string, readonly Selector[]>();

  spiffeId(text: string): SpiffeId {
    return memo(this.ids, text, () => SpiffeId.parse(text));
  }

  trustDomain(text: string): TrustDomain {
    return memo(this.tds, text, () => TrustDomain.parse(text));
  }

  selectors(key: string): readonly Selector[] {
    return memo(this.selectorSets, key, () => {
      const list = JSON.parse(key) as unknown;
      if (!Array.isArray(list)) throw new Error('selector set is not a list');
      return Object.freeze(list.map((s) => Object.freeze(parseSelector(String(s)))));
    });
  }

  entry(row: EntryRow): RegistrationEntry {
    try {
      const fed = JSON.parse(row.federates_key) as string[];
      return Object.freeze({
        id: row.id as EntryId,
        spiffeId: this.spiffeId(row.spiffe_id),
        parentId: this.spiffeId(row.parent_id),
        selectors: this.selectors(row.selectors_key),
        x509SvidTtl: row.x509_svid_ttl ?? undefined,
        jwtSvidTtl: row.jwt_svid_ttl ?? undefined,
        dnsNames: Object.freeze(JSON.parse(row.dns_names) as string[]),
        federatesWith: Object.freeze(fed.map((t) => this.trustDomain(t))),
        admin: row.admin === 1,
        downstream: row.downstream === 1,
        hint: row.hint ?? undefined,
        expiresAt: row.expires_at === null ? undefined : new Date(row.expires_at),
        revision: row.revision,
        createdAt: new Date(row.created_at),
        updatedAt: new Date(row.updated_at),
      });
    } catch (e) {
      throw corrupt(`entry ${row.id}`, e);
    }
  }

  node(row: NodeRow): AttestedNode {
    try {
      let status: NodeStatus;
      if (row.status === 'active' && row.svid_serial !== null && row.svid_not_after !== null) {
        status = { kind: 'active', svid: { serial: row.svid_serial, notAfter: new Date(row.svid_not_after) } };
      } else if (row.status === 'evicted') {
        status = { kind: 'evicted', since: new Date(row.status_since) };
      } else if (row.status === 'banned' && row.banned_reason !== null) {
        status = { kind: 'banned', since: new Date(row.status_since), reason: row.banned_reason };
      } else if (row.status === 'drifted' && row.banned_reason !== null) {
        status = { kind: 'drifted', since: new Date(row.status_since), reason: row.banned_reason };
      } else {
        throw new Error(`status ${row.status} does not fit its columns`);
      }
      if (row.attestation_type !== 'tpm') throw new Error(`attestation type ${row.attestation_type}`);
      return Object.freeze({
        agentId: this.spiffeId(row.agent_id),
        ekPublicHash: row.ek_public_hash,
        akName: row.ak_name ?? undefined,
        attestationType: 'tpm' as const,
        selectors: this.selectors(row.selectors_key),
        status: Object.freeze(status),
        lastQuote: Object.freeze({
          clock: BigInt(row.quote_clock),
          resetCount: row.quote_reset_count,
          restartCount: row.quote_restart_count,
        }),
        firstSeen: new Date(row.first_seen),
        lastSeen: new Date(row.last_seen),
        revision: row.revision,
      });
    } catch (e) {
      throw corrupt(`node ${row.agent_id}`, e);
    }
  }

  ownBundle(row: BundleRow): OwnBundle {
    if (row.kind !== 'own' || row.sequence === null) throw corrupt(`bundle ${row.trust_domain}`, undefined);
    return Object.freeze({
      trustDomain: this.trustDomain(row.trust_domain),
      jwks: row.jwks,
      sequence: row.sequence,
      updatedAt: new Date(row.updated_at),
    });
  }

  federatedBundle(row: BundleRow): FederatedBundle {
    if (row.kind !== 'federated') throw corrupt(`bundle ${row.trust_domain}`, undefined);
    return Object.freeze({
      trustDomain: this.trustDomain(row.trust_domain),
      jwks: row.jwks,
      refreshHint: row.refresh_hint ?? undefined,
      updatedAt: new Date(row.updated_at),
    });
  }
}
