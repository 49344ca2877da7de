import { parseArgs, type ParseArgsConfig } from 'node:util';

export interface Command {
  /** Flags summary shown after the command name in help. */
  readonly usage: string;
  readonly description: string;
  run(argv: string[]): Promise<number>;
}

/** An error meant for the user: printed without a stack trace. */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** node:util parseArgs with strict flags, turning its errors into CliErrors. */
export function parseFlags<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals });
  } catch (e) {
    throw new CliError((e as Error).message, 2);
  }
}
