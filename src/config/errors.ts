/** One problem in a configuration file: the dotted key path and what is wrong there. */
export interface ConfigIssue {
  /** `server.ca.ttl`, `server.attestation.pcrs[2]`; `(file)` for the file as a whole. */
  readonly path: string;
  readonly message: string;
}

/** The configuration file cannot be used; `issues` lists every problem found. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly file: string,
    readonly issues: readonly ConfigIssue[],
  ) {
    super(
      `${file}: ${issues.length === 1 ? 'a problem' : `${issues.length} problems`} in the configuration\n` +
        issues.map((i) => `  ${i.path}: ${i.message}`).join('\n'),
    );
  }
}
