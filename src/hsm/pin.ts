/** Reads the user PIN from its source. Errors name the source, never the content. */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { PinSourceError } from './errors.js';

/** Upper bound for a PIN file: PINs are short, and a wrong path should not slurp a large file. */
const MAX_PIN_FILE = 4096;

export type PinSource = { env: string } | { file: string };

function fromEnv(source: { env: string }): string {
  const v = process.env[source.env];
  if (v === undefined || v === '') throw new PinSourceError(`PIN environment variable ${source.env} is not set or empty`);
  return v;
}

function fromBuffer(file: string, buf: Buffer): string {
  if (buf.length > MAX_PIN_FILE) throw new PinSourceError(`PIN file ${file} is larger than ${MAX_PIN_FILE} bytes`);
  // One trailing newline (as `echo` writes it) is not part of the PIN.
  const pin = buf.toString('utf8').replace(/\r?\n$/, '');
  buf.fill(0);
  if (pin === '') throw new PinSourceError(`PIN file ${file} is empty`);
  return pin;
}

const readError = (file: string, e: unknown): PinSourceError =>
  new PinSourceError(`cannot read PIN file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'unknown error'}`);

/** Reads the PIN (start-up). The source is a small file or a variable: one synchronous read, as for re-logins. */
export async function readPin(source: PinSource): Promise<string> {
  return readPinSync(source);
}

/**
 * Why a PIN file of this mode may not be used, or undefined when it may: the
 * PIN unlocks the CA's keys, so only the file's owner may read or write it.
 */
export function pinFileModeRefusal(file: string, mode: number): string | undefined {
  if ((mode & 0o170000) !== 0o100000) return `PIN file ${file} is not a regular file`;
  if ((mode & 0o077) === 0) return undefined;
  const octal = '0' + (mode & 0o7777).toString(8).padStart(3, '0');
  return `PIN file ${file} has mode ${octal}: it must not be readable or writable by group or others (chmod 600 ${file})`;
}

/** The same, synchronously: for re-reading during a re-login, which happens inside a PKCS#11 call sequence. */
export function readPinSync(source: PinSource): string {
  if ('env' in source) return fromEnv(source);
  let fd: number;
  try {
    fd = openSync(source.file, 'r');
  } catch (e) {
    throw readError(source.file, e);
  }
  let buf: Buffer;
  try {
    // Checked on the open file: what is read is what was checked.
    let mode: number;
    try {
      mode = fstatSync(fd).mode;
    } catch (e) {
      throw readError(source.file, e);
    }
    const refusal = pinFileModeRefusal(source.file, mode);
    if (refusal !== undefined) throw new PinSourceError(refusal);
    try {
      buf = readFileSync(fd);
    } catch (e) {
      throw readError(source.file, e);
    }
  } finally {
    closeSync(fd);
  }
  return fromBuffer(source.file, buf);
}

/**
 * Holds the PIN for re-logins, in closures only (no property, nothing that
 * inspection or JSON would show). A PIN the token rejected is remembered by a
 * salted digest so that it is never tried again; re-reading the source can
 * bring a different one.
 */
export interface PinHolder {
  /** Calls `use` with the PIN currently held. */
  withPin<T>(use: (pin: string) => T): T;
  /** The token refused the PIN held now: it will not be offered again. */
  markRejected(): void;
  /** Re-reads the source; true when it now holds a PIN other than the rejected one. Throws PinSourceError. */
  reload(): boolean;
}

export function pinHolder(source: PinSource, initial: string): PinHolder {
  let pin = initial;
  const salt = randomBytes(16);
  const digest = (p: string): string => createHash('sha256').update(salt).update(p, 'utf8').digest('hex');
  let rejected: string | undefined;
  return {
    withPin: (use) => use(pin),
    markRejected() {
      rejected = digest(pin);
    },
    reload() {
      const next = readPinSync(source);
      if (rejected !== undefined && digest(next) === rejected) return false;
      pin = next;
      return true;
    },
  };
}
