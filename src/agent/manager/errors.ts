/** Typed errors of the SVID manager. */

export type SvidManagerFailure =
  | 'unknown-entry' // the entry is not (or no longer) one this agent holds
  | 'agent-svid-expired' // the agent has no valid identity: it serves nothing
  | 'server-unavailable' // no JWT-SVID could be had and none is cached
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
