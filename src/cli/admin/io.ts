/** Where admin commands write: the process's stdout/stderr, or a buffer in tests. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** Standard input, for `bundle set` without --path. */
  readStdin(): Promise<string>;
}

export const processIo: CliIo = {
  out: (t) => void process.stdout.write(t.endsWith('\n') ? t : t + '\n'),
  err: (t) => void process.stderr.write(t.endsWith('\n') ? t : t + '\n'),
  async readStdin() {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    return Buffer.concat(chunks).toString('utf8');
  },
};
