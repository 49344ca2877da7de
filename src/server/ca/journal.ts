/**
 * The CA journal: which keys (by HSM label and id) the CA has, in which
 * state, their certificates, and an upper bound on the notAfter of what each
 * signed. Never a private key. A store will hold it later; for now a JSON
 * file replaced atomically (temp file, fsync, rename, fsync of the directory).
 */
import { open, rename, readFile, mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { CaStateError } from './errors.js';

export type AuthorityState = 'prepared' | 'active' | 'old';

const authorityBase = {
  index: z.number().int().positive(),
  label: z.string().min(1).max(128),
  keyId: z.string().regex(/^[0-9a-f]{2,128}$/),
  keyType: z.enum(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072']),
  state: z.enum(['prepared', 'active', 'old']),
  notBeforeMs: z.number().int(),
  notAfterMs: z.number().int(),
  /** No SVID this key signed expires after this (null: it signed nothing yet). */
  issuedUntilMs: z.number().int().nullable(),
};

const journalSchema = z
  .object({
    version: z.literal(1),
    trustDomain: z.string().min(1),
    bundleSequence: z.number().int().nonnegative(),
    nextIndex: z.object({ x509: z.number().int().positive(), jwt: z.number().int().positive() }).strict(),
    x509: z
      .array(
        z
          .object({
            ...authorityBase,
            certificate: z.string().regex(/^[A-Za-z0-9+/=]+$/),
            /** Rollover certificates: this CA certificate signed by the key active when it was prepared. */
            endorsements: z.array(z.string().regex(/^[A-Za-z0-9+/=]+$/)).max(4).optional(),
          })
          .strict(),
      )
      .max(64),
    jwt: z.array(z.object({ ...authorityBase, kid: z.string().min(1).max(128) }).strict()).max(64),
  })
  .strict();

export type CaJournalState = z.infer<typeof journalSchema>;
export type JournalX509Authority = CaJournalState['x509'][number];
export type JournalJwtAuthority = CaJournalState['jwt'][number];

export interface CaJournal {
  /** The last saved state, or undefined for a CA that never started. */
  load(): Promise<CaJournalState | undefined>;
  /** Replaces the saved state; resolves once it is durable. */
  save(state: CaJournalState): Promise<void>;
}

export function parseJournal(text: string, where: string): CaJournalState {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CaStateError(`CA journal ${where} is not JSON`, { cause: e });
  }
  const r = journalSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new CaStateError(`CA journal ${where} is invalid at ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'unknown'}`);
  }
  return r.data;
}

const FILE = 'ca-journal.json';

export class FileCaJournal implements CaJournal {
  readonly path: string;
  constructor(readonly dir: string) {
    this.path = join(dir, FILE);
  }

  async load(): Promise<CaJournalState | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new CaStateError(`cannot read CA journal ${this.path}`, { cause: e });
    }
    return parseJournal(text, this.path);
  }

  async save(state: CaJournalState): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = join(this.dir, `.${FILE}.${randomBytes(6).toString('hex')}.tmp`);
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(state, null, 1) + '\n');
      await fh.sync();
    } catch (e) {
      await fh.close();
      await unlink(tmp).catch(() => undefined);
      throw e;
    }
    await fh.close();
    await rename(tmp, this.path);
    // The rename is durable only once the directory entry is.
    const dh = await open(this.dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }
}

/** A journal in memory, for unit tests and for tools that must not touch disk. */
export class MemoryCaJournal implements CaJournal {
  private text: string | undefined;
  saves = 0;
  async load(): Promise<CaJournalState | undefined> {
    return this.text === undefined ? undefined : parseJournal(this.text, 'in memory');
  }
  async save(state: CaJournalState): Promise<void> {
    this.text = JSON.stringify(state);
    this.saves++;
  }
}
