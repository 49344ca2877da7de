/**
 * Node groups. An entry parented to the server's own ID is a node group (as
 * SPIRE's node aliases are parented to its server): its selectors are node
 * selectors, and an agent whose attested selectors include them all may serve
 * the entries parented to the group's SPIFFE ID. Tying node groups to the
 * server as parent keeps a workload entry that happens to carry `tpm:`
 * selectors from ever acting as a group.
 */
import type { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import type { RegistrationEntry } from './types.js';

export const SERVER_ID_PATH = '/keel/server';

/** `spiffe://<td>/keel/server`: the parent of every node-group entry. */
export function serverIdOf(trustDomain: TrustDomain): SpiffeId {
  return trustDomain.child(SERVER_ID_PATH);
}

export function isServerId(id: SpiffeId): boolean {
  return id.path === SERVER_ID_PATH;
}

