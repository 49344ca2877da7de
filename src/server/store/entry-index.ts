/**
 * An in-memory index of every registration entry that answers "which entries
 * may this agent hold" with map lookups instead of a recursive query: by
 * parent ID, and node groups by selector. Built once, then brought forward
 * with the entries written and deleted since its revision.
 */
import type { SpiffeId } from '../../spiffe/id.js';
import { isServerId, serverIdOf } from './node-groups.js';
import { formatSelector, type Selector } from './selectors.js';
import type { RegistrationEntry } from './types.js';

function addTo(map: Map<string, RegistrationEntry[]>, key: string, e: RegistrationEntry): void {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  list.push(e);
}

function removeFrom(map: Map<string, RegistrationEntry[]>, key: string, e: RegistrationEntry): void {
  const list = map.get(key);
  if (!list) return;
  const i = list.indexOf(e);
  if (i >= 0) list.splice(i, 1);
  if (list.length === 0) map.delete(key);
}

export class EntryIndex {
  private readonly byId = new Map<string, RegistrationEntry>();
  private readonly byParent = new Map<string, RegistrationEntry[]>();
  /** Node-group entries, under each of their selectors. */
  private readonly groupsBySelector = new Map<string, RegistrationEntry[]>();
  private rev: number;

  constructor(entries: Iterable<RegistrationEntry>, revision: number) {
    for (const e of entries) this.put(e);
    this.rev = revision;
  }

  /** The entries revision the index reflects. */
  get revision(): number {
    return this.rev;
  }

  get size(): number {
    return this.byId.size;
  }

  /** Brings the index to `revision`: deletions first, so a deleted-then-recreated id ends up present. */
  apply(upserts: Iterable<RegistrationEntry>, deletedIds: Iterable<string>, revision: number): void {
    for (const id of deletedIds) this.remove(id);
    for (const e of upserts) this.put(e);
    this.rev = revision;
  }

  private put(e: RegistrationEntry): void {
    this.remove(e.id);
    this.byId.set(e.id, e);
    addTo(this.byParent, e.parentId.toString(), e);
    if (isServerId(e.parentId)) for (const s of e.selectors) addTo(this.groupsBySelector, formatSelector(s), e);
  }

  private remove(id: string): void {
    const old = this.byId.get(id);
    if (!old) return;
    this.byId.delete(id);
    removeFrom(this.byParent, old.parentId.toString(), old);
    if (isServerId(old.parentId)) for (const s of old.selectors) removeFrom(this.groupsBySelector, formatSelector(s), old);
  }

  authorized(agentId: SpiffeId, nodeSelectors: readonly Selector[], now: Date): RegistrationEntry[] {
    const t = now.getTime();
    const live = (e: RegistrationEntry) => e.expiresAt === undefined || e.expiresAt.getTime() > t;
    const server = serverIdOf(agentId.trustDomain).toString();

    // Node groups of this agent: every selector of the group is among the agent's.
    const hits = new Map<RegistrationEntry, number>();
    for (const key of new Set(nodeSelectors.map(formatSelector))) {
      for (const g of this.groupsBySelector.get(key) ?? []) hits.set(g, (hits.get(g) ?? 0) + 1);
    }
    const queue: string[] = [agentId.toString()];
    for (const [g, n] of hits) {
      if (n === g.selectors.length && g.parentId.toString() === server && live(g)) queue.push(g.spiffeId.toString());
    }

    // Breadth-first down the parent links; `visited` makes cycles harmless.
    const visited = new Set<string>(queue);
    const out: RegistrationEntry[] = [];
    const seen = new Set<string>();
    for (let i = 0; i < queue.length; i++) {
      for (const e of this.byParent.get(queue[i]!) ?? []) {
        if (seen.has(e.id) || !live(e)) continue;
        seen.add(e.id);
        out.push(e);
        const child = e.spiffeId.toString();
        // Never descend into the server's ID: that would hand out every node group's entries.
        if (!visited.has(child) && !isServerId(e.spiffeId)) {
          visited.add(child);
          queue.push(child);
        }
      }
    }
    return out;
  }
}
