/** Typed errors of workload attestation and the Workload API server. */

/** Why attesting a caller failed; the Workload API answers Unavailable for each, except 'exe-changed' (PermissionDenied). */
export type AttestationFailure =
  | 'process-gone' // no /proc/<pid> (exited, or never visible to us)
  | 'process-newer-than-connection' // the pid now names a process started after the connection was accepted
  | 'exe-changed' // the process that opened the connection exec'd another executable since
  | 'proc-unreadable' // a /proc file could not be read (permissions, race with exit)
  | 'proc-malformed'; // a /proc file did not have the shape the kernel writes

export class WorkloadAttestationError extends Error {
  override readonly name = 'WorkloadAttestationError';
  constructor(
    readonly reason: AttestationFailure,
    readonly pid: number,
    detail: string,
  ) {
    super(`attesting pid ${pid}: ${detail}`);
  }
}

/** A /proc or /etc file that is not in the format the kernel or shadow-utils write. */
export class ProcFormatError extends Error {
  override readonly name = 'ProcFormatError';
  constructor(
    readonly file: string,
    detail: string,
  ) {
    super(`${file}: ${detail}`);
  }
}

export type ServerStartFailure = 'socket-in-use' | 'bad-socket-path' | 'unsafe-socket-directory' | 'listen-failed' | 'proto-missing';

export class WorkloadApiStartError extends Error {
  override readonly name = 'WorkloadApiStartError';
  constructor(
    readonly reason: ServerStartFailure,
    readonly socketPath: string,
    detail: string,
    /** With 'unsafe-socket-directory': the directory that failed the check. */
    readonly directory?: string,
  ) {
    super(`Workload API on ${socketPath}: ${detail}`);
  }
}
