/**
 * How the PostgreSQL store reaches its database: host and port or a Unix
 * socket directory, TLS as libpq's `sslmode` means it (disable, require,
 * verify-ca, verify-full), and the password from a file or an environment
 * variable, read when a connection is opened and never kept in the
 * configuration, a log line or an error message.
 */
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import pg from 'pg';
import { StoreError } from './errors.js';

export type SslMode = 'disable' | 'require' | 'verify-ca' | 'verify-full';

export type PasswordSource = { readonly file: string } | { readonly env: string };

export interface PostgresConnectionOptions {
  /** A host name or address (TCP), or leave it out and give `socketDir`. */
  readonly host?: string;
  /** Default 5432. */
  readonly port?: number;
  /** A directory holding PostgreSQL's Unix socket (`.s.PGSQL.<port>`). */
  readonly socketDir?: string;
  readonly database: string;
  readonly user: string;
  /** Where the password is; none for peer/trust/certificate authentication. */
  readonly password?: PasswordSource;
  /** Default verify-full over TCP; a Unix socket has no TLS (disable). */
  readonly sslmode?: SslMode;
  /** PEM file of the CA(s) the server's certificate must chain to (verify-ca, verify-full); default the system's. */
  readonly caFile?: string;
  /** Connections in the pool; default 10. The change feed holds one more. */
  readonly poolSize?: number;
  /** Default 10 s. */
  readonly connectTimeoutMs?: number;
  /** application_name, shown in pg_stat_activity; default "keel". */
  readonly applicationName?: string;
}

const INT8_OID = 20;

const noPassword = (): undefined => undefined;

/** BIGINT columns (times in ms, revisions, counts) come back as numbers; one past 2^53 is a corrupt store. */
function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new StoreError(`a BIGINT from the store (${text}) is beyond 2^53`);
  return n;
}

const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID && format !== 'binary' ? parseInt8 : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** Reads the password where the configuration says it is; the error names the source, never a value. */
export function readPassword(source: PasswordSource): string {
  if ('env' in source) {
    const v = process.env[source.env];
    if (v === undefined || v === '') throw new StoreError(`the database password variable ${source.env} is not set`);
    return v;
  }
  let text: string;
  try {
    text = readFileSync(source.file, 'utf8');
  } catch (e) {
    throw new StoreError(`cannot read the database password file ${source.file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const v = text.replace(/\r?\n$/, '');
  if (v === '') throw new StoreError(`the database password file ${source.file} is empty`);
  return v;
}

function readCa(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new StoreError(`cannot read the database CA file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

function tlsOptions(o: PostgresConnectionOptions): false | ConnectionOptions {
  const mode = o.sslmode ?? (o.socketDir !== undefined ? 'disable' : 'verify-full');
  if (o.socketDir !== undefined && mode !== 'disable') {
    throw new StoreError(`sslmode ${mode} needs a TCP host: PostgreSQL has no TLS over a Unix socket`);
  }
  if (mode === 'disable') return false;
  if (mode === 'require') return { rejectUnauthorized: false };
  const ca = o.caFile !== undefined ? readCa(o.caFile) : undefined;
  if (mode === 'verify-ca') {
    if (ca === undefined) throw new StoreError('sslmode verify-ca needs a CA file');
    return { ca, rejectUnauthorized: true, checkServerIdentity: () => undefined };
  }
  // pg hands tls.connect the host, so the certificate is checked against the name or address connected to.
  return { ...(ca !== undefined ? { ca } : {}), rejectUnauthorized: true };
}

/** The pg client configuration, checked (files read) once so that a bad one fails at start-up with its name. */
export function clientConfig(o: PostgresConnectionOptions): pg.ClientConfig & { max: number } {
  if (typeof o.database !== 'string' || o.database === '') throw new StoreError('no database name given');
  if (typeof o.user !== 'string' || o.user === '') throw new StoreError('no database user given');
  if ((o.host === undefined) === (o.socketDir === undefined)) throw new StoreError('give exactly one of a host and a socket directory');
  const poolSize = o.poolSize ?? 10;
  if (!Number.isSafeInteger(poolSize) || poolSize < 1 || poolSize > 1000) throw new StoreError('the pool size must be 1..1000');
  const source = o.password;
  if (source) readPassword(source); // fail now, with the source's name, rather than at the first connection
  return {
    host: o.socketDir ?? o.host,
    port: o.port ?? 5432,
    database: o.database,
    user: o.user,
    // A function: read again for every new connection (a rotated password is picked up), never stored in the config.
    // Without a source, no password at all: not PGPASSWORD, not ~/.pgpass behind the configuration's back.
    password: source ? () => readPassword(source) : (noPassword as unknown as () => string),
    ssl: tlsOptions(o),
    connectionTimeoutMillis: o.connectTimeoutMs ?? 10_000,
    application_name: o.applicationName ?? 'keel',
    types,
    max: poolSize,
  };
}

/** A description of where the store is, for logs: no password, ever. */
export function describeConnection(o: PostgresConnectionOptions): string {
  const where = o.socketDir !== undefined ? `socket ${o.socketDir}` : `${o.host}:${o.port ?? 5432}`;
  return `postgresql ${o.user}@${where}/${o.database}`;
}
