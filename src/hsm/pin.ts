/** Reads the user PIN from its source. Errors name the source, never the content. */
import { readFile } from 'node:fs/promises';
import { PinSourceError } from './errors.js';

/** Upper bound for a PIN file: PINs are short, and a wrong path should not slurp a large file. */
const MAX_PIN_FILE = 4096;

export async function readPin(source: { env: string } | { file: string }): Promise<string> {
  if ('env' in source) {
    const v = process.env[source.env];
    if (v === undefined || v === '') throw new PinSourceError(`PIN environment variable ${source.env} is not set or empty`);
    return v;
  }
  let buf: Buffer;
  try {
    buf = await readFile(source.file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new PinSourceError(`cannot read PIN file ${source.file}: ${code}`);
  }
  if (buf.length > MAX_PIN_FILE) throw new PinSourceError(`PIN file ${source.file} is larger than ${MAX_PIN_FILE} bytes`);
  // One trailing newline (as `echo` writes it) is not part of the PIN.
  const pin = buf.toString('utf8').replace(/\r?\n$/, '');
  buf.fill(0);
  if (pin === '') throw new PinSourceError(`PIN file ${source.file} is empty`);
  return pin;
}
