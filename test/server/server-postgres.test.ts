/**
 * `keel server run` on a PostgreSQL store: over TCP with TLS (verify-full)
 * and the password from a file, as a role that owns only its database. The
 * admin CLI's writes land in PostgreSQL, the password never reaches the
 * logs, and a restart finds its CA again through the journal kept there.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../simulator/ports.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { PostgresDatastore } from '../../src/server/store/postgres-datastore.js';
import { SKIP_PG, startPgCluster, type PgCluster } from '../store/pg-cluster.js';

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '../..');
const MAIN = join(ROOT, 'src/cli/main.ts');

function startProcess(args: string[], env: NodeJS.ProcessEnv) {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, logs: () => out, exited };
}

async function waitReady(url: string, proc: ReturnType<typeof startProcess>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.child.exitCode !== null) throw new Error(`server exited early:\n${proc.logs()}`);
    try {
      if ((await fetch(url)).status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server not ready in ${timeoutMs} ms:\n${proc.logs()}`);
}

describe.skipIf(SKIP_PG)('keel server run on PostgreSQL', () => {
  let dir: string;
  let pgc: PgCluster;
  let token: SoftHsmToken;
  let env: NodeJS.ProcessEnv;
  let config: string;
  let httpPort: number;
  let db: string;
  const password = 'pg-secret-' + Math.random().toString(36).slice(2);

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keel-server-pg-'));
    [pgc, token] = await Promise.all([startPgCluster({ tls: true }), createSoftHsmToken({ label: 'keel' })]);
    await pgc.createRole('keel_srv', password);
    db = await pgc.createDatabase('keel_srv');
    await writeFile(join(dir, 'db.password'), password + '\n', { mode: 0o600 });
    httpPort = await freePort();
    const socket = join(dir, 'admin', 'admin.sock');
    config = join(dir, 'server.yaml');
    await writeFile(
      config,
      `server:
  trust_domain: example.org
  data_dir: ${join(dir, 'data')}
  listen:
    node_api: 127.0.0.1:${await freePort()}
    http: 127.0.0.1:${httpPort}
    http_plaintext: true
    admin_socket: ${socket}
  store:
    postgres:
      host: 127.0.0.1
      port: ${pgc.port}
      database: ${db}
      user: keel_srv
      password_file: db.password
      sslmode: verify-full
      ca_file: ${pgc.caFile}
  hsm:
    module: ${token.module}
    token_label: keel
    pin_source: env:KEEL_TEST_PIN
  ca:
    ttl: 24h
  attestation:
    ek_allow_list: ["${'ab'.repeat(32)}"]
    firmware_policies: [${join(ROOT, 'firmware-policies/swtpm-dev.yaml')}]
`,
    );
    env = { ...process.env, SOFTHSM2_CONF: token.conf, KEEL_TEST_PIN: token.pin, KEEL_ADMIN_SOCKET: socket };
  });
  afterAll(async () => {
    await token?.destroy();
    await pgc?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const cli = async (...args: string[]) => (await run(process.execPath, ['--import', 'tsx', MAIN, ...args], { env })).stdout;

  it('serves from PostgreSQL, keeps the password out of the logs, and restarts with the same CA', async () => {
    const server = startProcess(['server', 'run', '--config', config], env);
    let caPem: string;
    try {
      await waitReady(`http://127.0.0.1:${httpPort}/ready`, server);
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
      await waitReady(`http://127.0.0.1:${httpPort}/ready`, again);
      expect(await cli('bundle', 'show')).toBe(caPem);
    } finally {
      again.child.kill('SIGTERM');
    }
    expect(await again.exited).toBe(0);
  });
});
