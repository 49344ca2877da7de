/**
 * A private PostgreSQL cluster for tests: `initdb` in a temp dir, `postgres`
 * on a free TCP port of 127.0.0.1 and a Unix socket in that dir, stopped and
 * removed afterwards. It uses Debian's `postgresql` package (binaries under
 * /usr/lib/postgresql/<version>/bin; scripts/setup.sh installs it).
 *
 * PostgreSQL refuses to run as root, and CI runs tests as root: then the
 * cluster is made and run as the `postgres` user the package creates (or
 * `nobody` when there is none), the child processes started with that uid/gid.
 *
 * Local (socket) connections are trusted; TCP needs a password (scram), and
 * with `tls: true` TCP needs TLS too (a server certificate for 127.0.0.1 from a
 * CA made here; plain TCP is rejected by pg_hba.conf).
 */
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from '../../simulator/ports.js';
import type { PostgresConnectionOptions } from '../../src/server/store/pg-connection.js';

const run = promisify(execFile);

export const SUPERUSER = 'keel_test';

export interface PgCluster {
  readonly dir: string;
  readonly socketDir: string;
  readonly port: number;
  /** The superuser's password (TCP logins). */
  readonly password: string;
  /** With `tls`: the CA that signed the server certificate, and one that did not. */
  readonly caFile: string | undefined;
  readonly otherCaFile: string | undefined;
  /** A fresh, empty database; returns its name. */
  createDatabase(owner?: string): Promise<string>;
  /** A login role with a password. */
  createRole(name: string, password: string): Promise<void>;
  /** Runs SQL as the superuser, on the socket. */
  sql<R extends pg.QueryResultRow = pg.QueryResultRow>(database: string, text: string, params?: unknown[]): Promise<R[]>;
  /** Options for a store on `database` over the Unix socket, as the superuser. */
  socketOptions(database: string): PostgresConnectionOptions;
  /** How long start-up took, for the test report. */
  readonly startMs: number;
  stop(): Promise<void>;
}

/** The newest installed PostgreSQL's bin directory. */
export function pgBinDir(): string | undefined {
  if (process.env.KEEL_PG_BIN) return process.env.KEEL_PG_BIN;
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(root, versions[0]!, 'bin') : undefined;
}

/** KEEL_SKIP_PG=1: a machine without PostgreSQL skips the PostgreSQL tests (CI never sets it: there they fail instead). */
export const SKIP_PG = process.env.KEEL_SKIP_PG === '1';

export const PG_MISSING = 'PostgreSQL is not installed (Debian package postgresql; scripts/setup.sh installs it)';

interface RunAs {
  uid: number;
  gid: number;
}

function runAsUser(): RunAs | undefined {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return undefined;
  for (const user of ['postgres', 'nobody']) {
    try {
      const uid = Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
      if (uid > 0) return { uid, gid };
    } catch {
      // no such user: try the next
    }
  }
  throw new Error('running as root, and neither a postgres nor a nobody user exists to run PostgreSQL as');
}

function own(path: string, as: RunAs | undefined, mode: number): void {
  if (as) chownSync(path, as.uid, as.gid);
  chmodSync(path, mode);
}

async function makeTls(dir: string, as: RunAs | undefined): Promise<{ ca: string; otherCa: string; cert: string; key: string }> {
  const tls = join(dir, 'tls');
  mkdirSync(tls, { mode: 0o755 });
  const p = (f: string) => join(tls, f);
  const openssl = (...args: string[]) => run('openssl', args, { cwd: tls });
  for (const name of ['ca', 'other-ca']) {
    await openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=keel test ${name}`,
      '-keyout', p(`${name}.key`), '-out', p(`${name}.pem`), '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
  }
  await openssl('req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', p('server.key'), '-out', p('server.csr'));
  writeFileSync(p('server.ext'), 'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n');
  await openssl('x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', p('server.ext'), '-out', p('server.pem'));
  own(p('server.key'), as, 0o600);
  own(p('server.pem'), as, 0o644);
  return { ca: p('ca.pem'), otherCa: p('other-ca.pem'), cert: p('server.pem'), key: p('server.key') };
}

const live = new Set<() => void>();
process.once('exit', () => {
  for (const stop of live) stop();
});

export async function startPgCluster(options: { tls?: boolean } = {}): Promise<PgCluster> {
  const t0 = Date.now();
  const bin = pgBinDir();
  if (!bin) throw new Error(PG_MISSING);
  const as = runAsUser();
  // /tmp rather than $TMPDIR: the postgres user must be able to reach the directory.
  const dir = mkdtempSync(join(as ? '/tmp' : (process.env.TMPDIR ?? '/tmp'), 'keel-pg-'));
  own(dir, as, 0o700);
  const data = join(dir, 'data');
  const password = randomBytes(18).toString('base64url');
  const pwfile = join(dir, 'pwfile');
  writeFileSync(pwfile, password + '\n');
  own(pwfile, as, 0o600);
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', LANG: 'C', HOME: dir };
  const opts = { env, cwd: dir, ...(as ? { uid: as.uid, gid: as.gid } : {}) };
  const pgctl = (...args: string[]) => run(join(bin, 'pg_ctl'), args, { ...opts, timeout: 60_000 });

  let started = false;
  const stopSync = () => {
    try {
      execFileSync(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop'], { ...opts, stdio: 'ignore', timeout: 20_000 });
    } catch {
      // already down
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await run(join(bin, 'initdb'), ['-D', data, '-U', SUPERUSER, `--pwfile=${pwfile}`, '--auth-local=trust', '--auth-host=scram-sha-256',
      '-E', 'UTF8', '--locale=C', '-N'], { ...opts, timeout: 120_000 });
    const tls = options.tls ? await makeTls(dir, as) : undefined;
    writeFileSync(
      join(data, 'pg_hba.conf'),
      tls
        ? 'local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\nhostnossl all all 127.0.0.0/8 reject\n'
        : 'local all all trust\nhost all all 127.0.0.0/8 scram-sha-256\n',
    );
    let lastErr: unknown;
    for (let attempt = 0; attempt < 3 && !started; attempt++) {
      const port = await freePort();
      const conf = [
        `port = ${port}`,
        `listen_addresses = '127.0.0.1,127.0.0.2'`,
        `unix_socket_directories = '${dir}'`,
        'max_connections = 200',
        'shared_buffers = 32MB',
        'fsync = off',
        'synchronous_commit = off',
        'full_page_writes = off',
        'log_min_messages = warning',
        ...(tls ? ['ssl = on', `ssl_cert_file = '${tls.cert}'`, `ssl_key_file = '${tls.key}'`] : []),
      ];
      appendFileSync(join(data, 'postgresql.conf'), '\n# keel test cluster\n' + conf.join('\n') + '\n');
      try {
        await pgctl('-D', data, '-l', join(dir, 'postgres.log'), '-w', '-t', '60', 'start');
        started = true;
        const cluster = makeCluster(dir, port, password, tls, stopSync, t0);
        live.add(stopSync);
        return cluster;
      } catch (e) {
        lastErr = e;
      }
    }
    const log = existsSync(join(dir, 'postgres.log')) ? readFileSync(join(dir, 'postgres.log'), 'utf8').slice(-2000) : '';
    throw new Error(`postgres did not start: ${(lastErr as Error)?.message}\n${log}`);
  } catch (e) {
    stopSync();
    throw e;
  }

  function makeCluster(
    dir: string,
    port: number,
    password: string,
    tls: { ca: string; otherCa: string } | undefined,
    stop: () => void,
    t0: number,
  ): PgCluster {
    let n = 0;
    const sql = async <R extends pg.QueryResultRow>(database: string, text: string, params?: unknown[]): Promise<R[]> => {
      const c = new pg.Client({ host: dir, port, user: SUPERUSER, database, password: '' });
      await c.connect();
      try {
        return (await c.query<R>(text, params)).rows;
      } finally {
        await c.end();
      }
    };
    return {
      dir,
      socketDir: dir,
      port,
      password,
      caFile: tls?.ca,
      otherCaFile: tls?.otherCa,
      startMs: Date.now() - t0,
      async createDatabase(owner?: string) {
        const name = `keel_${process.pid}_${++n}`;
        await sql('postgres', `CREATE DATABASE ${name}${owner ? ` OWNER ${pg.escapeIdentifier(owner)}` : ''}`);
        return name;
      },
      async createRole(name: string, pw: string) {
        await sql('postgres', `CREATE ROLE ${pg.escapeIdentifier(name)} LOGIN PASSWORD ${pg.escapeLiteral(pw)}`);
      },
      sql,
      socketOptions: (database: string) => ({ socketDir: dir, port, database, user: SUPERUSER, poolSize: 4 }),
      async stop() {
        live.delete(stop);
        await pgctl('-D', join(dir, 'data'), '-m', 'fast', '-w', 'stop').catch(() => undefined);
        stop();
      },
    };
  }
}
