/** Why a CSR was refused; `reason` is a short machine-friendly code. */
export type CsrErrorReason =
  | 'too-large'
  | 'bad-encoding'
  | 'bad-structure'
  | 'unsupported-key'
  | 'weak-key'
  | 'unsupported-signature-algorithm'
  | 'bad-signature';

export class CsrError extends Error {
  override readonly name = 'CsrError';
  constructor(
    readonly reason: CsrErrorReason,
    detail: string,
  ) {
    super(`invalid CSR (${reason}): ${detail}`);
  }
}

/** The CA's configuration cannot work; `path` names the offending setting. */
export class CaConfigError extends Error {
  override readonly name = 'CaConfigError';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`CA configuration ${path}: ${reason}`);
  }
}

/** An issuance request the CA refuses (wrong trust domain, bad TTL, bad DNS name…). */
export class CaIssueError extends Error {
  override readonly name = 'CaIssueError';
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`cannot issue: ${field}: ${reason}`);
  }
}

/** The journal is unreadable or disagrees with the HSM (a key it names is gone, or differs). */
export class CaStateError extends Error {
  override readonly name: string = 'CaStateError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The journal could not be saved (the store refused the write: disk full, I/O
 * error…). What depended on it is refused rather than issued: an SVID whose
 * key's bound is not durable could outlive that key in the bundle. The next
 * issuance or rotation tries the write again, so service resumes by itself.
 */
export class CaJournalWriteError extends CaStateError {
  override readonly name: string = 'CaJournalWriteError';
  constructor(cause: unknown) {
    super(`the CA journal could not be saved, so nothing that depends on it is issued: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}
