/**
 * `keel server run` on a PostgreSQL store: over TCP with TLS (verify-full)
 * and the password from a file, as a role that owns only its database. The
 * admin CLI's writes land in PostgreSQL, the password never reaches the
 * logs, and a restart finds its CA again through the journal kept there.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { PostgresDatastore } from '../../src/server/store/postgres-datastore.js';
import { SKIP_PG, startPgCluster, type PgCluster } from '../store/pg-cluster.js';
import { keel, ROOT, startProcess, waitReady, writeServerConfig } from './server-harness.js';

describe.skipIf(SKIP_PG)('keel server run on PostgreSQL', () => {
  let dir: string;
  let pgc: PgCluster;
  let token: SoftHsmToken;
  let env: NodeJS.ProcessEnv;
  let config: string;
  let readyUrl: string;
  let db: string;
  const password = 'pg-secret-' + Math.random().toString(36).slice(2);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keel-server-pg-'));
    [pgc, token] = await Promise.all([startPgCluster({ tls: true }), createSoftHsmToken({ label: 'keel' })]);
    await pgc.createRole('keel_srv', password);
    db = await pgc.createDatabase('keel_srv');
    await writeFile(join(dir, 'db.password'), password + '\n', { mode: 0o600 });
    ({ config, env, readyUrl } = await writeServerConfig(
      dir,
      token,
      `  store:
    postgres:
      host: 127.0.0.1
      port: ${pgc.port}
      database: ${db}
      user: keel_srv
      password_file: db.password
      sslmode: verify-full
      ca_file: ${pgc.caFile}
  attestation:
    ek_allow_list: ["${'ab'.repeat(32)}"]
    firmware_policies: [${join(ROOT, 'firmware-policies/swtpm-dev.yaml')}]
`,
    ));
  });
  afterAll(async () => {
    await token?.destroy();
    await pgc?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const cli = async (...args: string[]) => (await keel(args, env)).stdout;

  it('serves from PostgreSQL, keeps the password out of the logs, and restarts with the same CA', async () => {
    const server = startProcess(['server', 'run', '--config', config], env);
    let caPem: string;
    try {
      await waitReady(readyUrl, server);
      caPem = await cli('bundle', 'show');
      await cli('entry', 'create', '--spiffe-id', 'spiffe://example.org/web', '--parent-id', 'spiffe://example.org/keel/agent/tpm/' + 'a'.repeat(64), '--selector', 'unix:uid:1000', '--json');
      const lines = server.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
      const opened = lines.find((l) => l.msg === 'store opened');
      expect(opened?.store).toBe(`postgresql keel_srv@127.0.0.1:${pgc.port}/${db}`);
      expect(server.logs()).not.toContain(password);
    } finally {
      server.child.kill('SIGTERM');
    }
    expect(await server.exited).toBe(0);

    // The entry and the CA journal are in PostgreSQL.
    const direct = await PostgresDatastore.open(pgc.socketOptions(db));
    try {
      expect((await direct.listEntries()).items.map((e) => e.spiffeId.toString())).toEqual(['spiffe://example.org/web']);
      expect(await direct.getCaJournal('spiffe://example.org/keel/server')).toBeDefined();
    } finally {
      await direct.close();
    }

    const again = startProcess(['server', 'run', '--config', config], env);
    try {
      await waitReady(readyUrl, again);
      expect(await cli('bundle', 'show')).toBe(caPem);
    } finally {
      again.child.kill('SIGTERM');
    }
    expect(await again.exited).toBe(0);
  });
});
