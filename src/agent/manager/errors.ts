/** Typed errors of the SVID manager. */

export type SvidManagerFailure =
  | 'unknown-entry' // the entry is not (or no longer) one this agent holds
  | 'identity-revoked' // the node lost its identity (drifted, evicted, banned): nothing to give until it attests again
  | 'agent-svid-expired' // the agent's own SVID expired (being renewed): it serves nothing for now
  | 'server-unavailable' // no JWT-SVID could be had by the deadline, after retries, and none is cached
  | 'stopped'; // the manager was stopped

export class SvidManagerError extends Error {
  override readonly name = 'SvidManagerError';
  constructor(
    readonly reason: SvidManagerFailure,
    detail: string,
  ) {
    super(detail);
  }
}
