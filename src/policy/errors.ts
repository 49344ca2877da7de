/** One problem in a firmware policy: the dotted path of the offending key and what is wrong there. */
export interface PolicyIssue {
  /** `pcrs.7`, `eventLog.kernelCommandLine.regex`, `selectors[1]`; `(file)` for the document as a whole. */
  readonly path: string;
  readonly message: string;
}

/** A firmware policy cannot be loaded, parsed or generated; `issues` lists every problem found. */
export class PolicyError extends Error {
  override readonly name = 'PolicyError';
  constructor(
    /** Where the policy came from: a file path, `(text)`, or `(generator)`. */
    readonly origin: string,
    readonly issues: readonly PolicyIssue[],
  ) {
    super(
      `${origin}: ${issues.length === 1 ? 'a problem' : `${issues.length} problems`} in the firmware policy\n` +
        issues.map((i) => `  ${i.path}: ${i.message}`).join('\n'),
    );
  }
}
