/**
 * What only the PostgreSQL store has: migrations that several servers
 * starting at once apply exactly once, TLS to the database as `sslmode` says,
 * the password from a file or the environment and never in an error, and a
 * change feed and pool that outlive a dropped connection. On a private
 * cluster that takes TLS only over TCP (see pg-cluster.ts).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LATEST_SCHEMA_VERSION, SchemaTooNewError, StoreError, type StoreChange } from '../../src/server/store/index.js';
import { clientConfig, type PostgresConnectionOptions } from '../../src/server/store/pg-connection.js';
import { MIGRATION_LOCK, migratePostgres, PG_LATEST_SCHEMA_VERSION, PG_MIGRATIONS } from '../../src/server/store/pg-migrations.js';
import { PostgresDatastore } from '../../src/server/store/postgres-datastore.js';
import { agent, id, sel, TrustDomain, waitFor } from './helpers.js';
import { SKIP_PG, startPgCluster, SUPERUSER, type PgCluster } from './pg-cluster.js';

let c: PgCluster;
const opened: PostgresDatastore[] = [];
const open = async (o: Parameters<typeof PostgresDatastore.open>[0]) => {
  const s = await PostgresDatastore.open(o);
  opened.push(s);
  return s;
};

beforeAll(async () => {
  if (SKIP_PG) return;
  c = await startPgCluster({ tls: true });
  console.info(`pg-datastore.test.ts: private PostgreSQL cluster (TLS) started in ${c.startMs} ms`);
});
afterAll(async () => {
  await c?.stop();
});
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close().catch(() => undefined);
});

const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e);

describe.skipIf(SKIP_PG)('migrations', () => {
  it('applies each migration exactly once when eight servers open a fresh database at the same moment', async () => {
    const db = await c.createDatabase();
    const stores = await Promise.all(Array.from({ length: 8 }, () => open(c.socketOptions(db))));
    const rows = await c.sql<{ version: number }>(db, 'SELECT version FROM schema_version ORDER BY version');
    expect(rows.map((r) => r.version)).toEqual(PG_MIGRATIONS.map((m) => m.version));
    expect(PG_LATEST_SCHEMA_VERSION).toBe(LATEST_SCHEMA_VERSION); // numbered like SQLite's
    // every one of them works on the one schema
    const e = await stores[3]!.createEntry({ spiffeId: id('/m'), parentId: agent(1), selectors: sel('unix:uid:1') });
    expect((await stores[7]!.getEntry(e.id))?.id).toBe(e.id);
    // the lock is not left behind
    const lock = await c.sql<{ ok: boolean }>(db, 'SELECT pg_try_advisory_lock($1, $2) AS ok', [...MIGRATION_LOCK]);
    expect(lock[0]!.ok).toBe(true);
  });

  it('makes a second server wait for a migration in progress, then finds it done', async () => {
    const db = await c.createDatabase();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const first = open({ ...c.socketOptions(db), migrate: { onLocked: async () => (locked(), held) } });
    await isLocked;
    let secondDone = false;
    const second = open(c.socketOptions(db)).then((s) => ((secondDone = true), s));
    await new Promise((r) => setTimeout(r, 400));
    expect(secondDone).toBe(false); // waiting on the lock, not migrating alongside
    release();
    await Promise.all([first, second]);
    expect((await c.sql(db, 'SELECT version FROM schema_version')).length).toBe(PG_MIGRATIONS.length);
  });

  it('gives up waiting for another server\u2019s migration lock with a StoreError that says so', async () => {
    const db = await c.createDatabase();
    const holder = new pg.Client({ host: c.socketDir, port: c.port, user: SUPERUSER, database: db });
    await holder.connect();
    try {
      await holder.query('SELECT pg_advisory_lock($1, $2)', [...MIGRATION_LOCK]);
      const err = await failure(open({ ...c.socketOptions(db), migrationLockTimeoutMs: 300 }));
      expect(err).toBeInstanceOf(StoreError);
      expect((err as Error).message).toMatch(/migration lock/);
      expect((await c.sql<{ t: string | null }>(db, `SELECT to_regclass('entries')::text AS t`))[0]!.t).toBeNull();
    } finally {
      await holder.end();
    }
  });

  it('rolls a failed migration back whole, releases the lock, and refuses a newer schema', async () => {
    const db = await c.createDatabase();
    const client = new pg.Client({ host: c.socketDir, port: c.port, user: SUPERUSER, database: db });
    await client.connect();
    try {
      const broken = [...PG_MIGRATIONS, { version: PG_LATEST_SCHEMA_VERSION + 1, description: 'broken', sql: 'CREATE TABLE half (a int); SELECT 1 / 0;' }];
      const err = await failure(migratePostgres(client, broken));
      expect(err).toBeInstanceOf(StoreError);
      expect((err as Error).message).toContain(`schema version ${PG_LATEST_SCHEMA_VERSION + 1} (broken)`);
      expect((await c.sql<{ v: number }>(db, 'SELECT max(version) AS v FROM schema_version'))[0]!.v).toBe(PG_LATEST_SCHEMA_VERSION);
      expect((await c.sql<{ t: string | null }>(db, `SELECT to_regclass('half')::text AS t`))[0]!.t).toBeNull();
      expect((await c.sql<{ ok: boolean }>(db, 'SELECT pg_try_advisory_lock($1, $2) AS ok', [...MIGRATION_LOCK]))[0]!.ok).toBe(true);

      await client.query('INSERT INTO schema_version (version, applied_at) VALUES ($1, 0)', [PG_LATEST_SCHEMA_VERSION + 1]);
      const rev = (await c.sql<{ revision: number }>(db, 'SELECT revision FROM store_revision'))[0]!.revision;
      const tooNew = await failure(open(c.socketOptions(db)));
      expect(tooNew).toBeInstanceOf(SchemaTooNewError);
      expect((tooNew as SchemaTooNewError).found).toBe(PG_LATEST_SCHEMA_VERSION + 1);
      expect((await c.sql<{ revision: string }>(db, 'SELECT revision FROM store_revision'))[0]!.revision).toBe(rev);
    } finally {
      await client.end();
    }
  });
});

describe.skipIf(SKIP_PG)('TLS and passwords', () => {
  const role = 'keel_app';
  const secret = 'correct-horse-' + Math.random().toString(36).slice(2);
  let db: string;
  let pwFile: string;
  beforeAll(async () => {
    await c.createRole(role, secret);
    db = await c.createDatabase(role);
    pwFile = join(c.dir, 'app.password');
    writeFileSync(pwFile, secret + '\n', { mode: 0o600 });
  });
  const tcp = (over: Partial<PostgresConnectionOptions> = {}): PostgresConnectionOptions => ({
    host: '127.0.0.1',
    port: c.port,
    database: db,
    user: role,
    password: { file: pwFile },
    sslmode: 'verify-full',
    caFile: c.caFile!,
    poolSize: 2,
    connectTimeoutMs: 5000,
    ...over,
  });
  /** Connects as the store would, and asks the server whether this connection is encrypted. */
  const sslOf = async (o: PostgresConnectionOptions): Promise<boolean> => {
    const { max: _max, ...cfg } = clientConfig(o);
    const client = new pg.Client(cfg);
    try {
      await client.connect();
      return (await client.query<{ ssl: boolean }>('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0]!.ssl;
    } finally {
      await client.end().catch(() => undefined);
    }
  };

  it('verify-full: a store opens over TLS with the password from a file, as a role that only owns its database', async () => {
    expect(await sslOf(tcp())).toBe(true);
    const s = await open(tcp());
    const e = await s.createEntry({ spiffeId: id('/tls'), parentId: agent(1), selectors: sel('unix:uid:1') });
    expect((await s.getEntry(e.id))?.spiffeId.path).toBe('/tls');
  });

  it('verify-full refuses a certificate for another address; verify-ca accepts it; neither accepts another CA', async () => {
    const wrongHost = await failure(open(tcp({ host: '127.0.0.2' })));
    expect(wrongHost).toBeInstanceOf(StoreError);
    expect((wrongHost as Error).message).toMatch(/IP: 127\.0\.0\.2|altnames|certificate/i);
    expect(await sslOf(tcp({ host: '127.0.0.2', sslmode: 'verify-ca' }))).toBe(true);
    await expect(failure(sslOf(tcp({ sslmode: 'verify-ca', caFile: c.otherCaFile! })))).resolves.toMatchObject({ code: expect.stringMatching(/CERT|SIGNATURE|ISSUER/) });
    expect(await failure(open(tcp({ caFile: c.otherCaFile! })))).toBeInstanceOf(StoreError);
  });

  it('require encrypts without checking the certificate; disable sends plain TCP (which this server refuses)', async () => {
    expect(await sslOf(tcp({ sslmode: 'require', caFile: c.otherCaFile! }))).toBe(true);
    const plain = await failure(open(tcp({ sslmode: 'disable' })));
    expect(plain).toBeInstanceOf(StoreError);
    expect((plain as Error).message).toMatch(/no encryption|pg_hba/);
  });

  it('takes the password from the environment', async () => {
    process.env.KEEL_TEST_DB_PASSWORD = secret;
    try {
      const s = await open(tcp({ password: { env: 'KEEL_TEST_DB_PASSWORD' } }));
      expect(await s.currentRevision()).toBeGreaterThanOrEqual(0);
    } finally {
      delete process.env.KEEL_TEST_DB_PASSWORD;
    }
    const unset = await failure(open(tcp({ password: { env: 'KEEL_TEST_DB_PASSWORD' } })));
    expect(unset).toBeInstanceOf(StoreError);
    expect((unset as Error).message).toContain('KEEL_TEST_DB_PASSWORD');
  });

  it('never puts a password in an error: wrong, missing, or right but refused', async () => {
    const wrong = 'wrong-' + secret;
    const wrongFile = join(c.dir, 'wrong.password');
    writeFileSync(wrongFile, wrong);
    const refused = await failure(open(tcp({ password: { file: wrongFile } })));
    expect(refused).toBeInstanceOf(StoreError);
    expect((refused as Error).message).toMatch(/password authentication failed/);
    const missing = await failure(open(tcp({ password: { file: join(c.dir, 'nope') } })));
    expect((missing as Error).message).toContain(join(c.dir, 'nope'));
    // the right password, but plain TCP: refused by pg_hba after the password was read
    const plain = await failure(open(tcp({ sslmode: 'disable' })));
    for (const e of [refused, missing, plain]) {
      const all = inspect(e, { depth: 8, showHidden: true }) + JSON.stringify(e) + String((e as Error).stack);
      expect(all).not.toContain(secret);
      expect(all).not.toContain(wrong);
    }
  });

  it('refuses contradictory settings before connecting', async () => {
    const errs = [
      await failure(open(tcp({ sslmode: 'verify-ca', caFile: undefined }))),
      await failure(open({ ...c.socketOptions(db), sslmode: 'require' })),
      await failure(open({ ...tcp(), socketDir: c.socketDir })),
      await failure(open(tcp({ caFile: join(c.dir, 'no-such-ca.pem') }))),
      await failure(open(tcp({ poolSize: 0 }))),
    ];
    for (const e of errs) expect(e).toBeInstanceOf(StoreError);
    expect((errs[0] as Error).message).toMatch(/verify-ca needs a CA file/);
    expect((errs[1] as Error).message).toMatch(/no TLS over a Unix socket/);
    expect((errs[3] as Error).message).toContain('no-such-ca.pem');
  });
});

describe.skipIf(SKIP_PG)('dropped connections', () => {
  it('the change feed reconnects after its connection is killed, and catches up on what it missed', async () => {
    const db = await c.createDatabase();
    const a = await open(c.socketOptions(db));
    const b = await open(c.socketOptions(db));
    const seen: StoreChange[] = [];
    b.subscribe((ch) => seen.push(ch));
    const killed = await c.sql<{ ok: boolean }>(
      db,
      `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'`,
      [db],
    );
    expect(killed.length).toBe(2); // a's and b's listeners
    const missed = await a.createEntry({ spiffeId: id('/missed'), parentId: agent(1), selectors: sel('unix:uid:1') });
    await waitFor(
      () => `the catch-up change (saw ${JSON.stringify(seen)})`,
      () => seen.some((ch) => ch.kind === 'entries' && ch.revision >= missed.revision),
      5000,
      20,
    );
    // and it listens again
    seen.length = 0;
    const later = await a.setFederatedBundle(TrustDomain.parse('p.test'), '{"keys":[]}');
    expect(later.trustDomain.name).toBe('p.test');
    await waitFor('the feed to resume (a bundles change)', () => seen.some((ch) => ch.kind === 'bundles'), 1000, 10);
  });

  it('the pool replaces connections the server terminated', async () => {
    const db = await c.createDatabase();
    const s = await open(c.socketOptions(db));
    await Promise.all(Array.from({ length: 4 }, (_, i) => s.createEntry({ spiffeId: id(`/p/${i}`), parentId: agent(1), selectors: sel('unix:uid:1') })));
    const killed = await c.sql(db, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [db]);
    expect(killed.length).toBeGreaterThan(1);
    await new Promise((r) => setTimeout(r, 200));
    expect((await s.listEntries()).items).toHaveLength(4);
    await s.createEntry({ spiffeId: id('/after'), parentId: agent(1), selectors: sel('unix:uid:1') });
    expect((await s.listEntries()).items).toHaveLength(5);
  });
});
