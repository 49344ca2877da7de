/** What can be wrong with an SVID file set, named so that a log line says which. */
export type SvidFileSetProblem =
  /** A configured file name is not a plain name in the directory, or two names collide. */
  | 'bad-file-name'
  /** A mode is not an octal permission (0..0777), or the key file would be readable by others. */
  | 'bad-mode'
  /** The output path exists and is not a directory (or is a symlink to one). */
  | 'not-a-directory'
  /** The private key does not belong to the leaf certificate. */
  | 'key-mismatch'
  /** The chain is not an X.509-SVID that chains to the bundle it came with. */
  | 'chain-invalid'
  /** The update carries no certificate, no key or no bundle. */
  | 'incomplete'
  /** A file system operation failed; the previous set is still in place. */
  | 'io';

/** A file set that was not written; the directory still holds the previous complete set. */
export class SvidFileSetError extends Error {
  override readonly name = 'SvidFileSetError';
  constructor(
    readonly problem: SvidFileSetProblem,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
