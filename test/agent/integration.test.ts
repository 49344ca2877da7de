/**
 * The agent end to end with real parts: swtpm through the native addon,
 * a SoftHSM-backed CA, a SQLite store, the Node API over TCP + TLS, the agent
 * process (startAgent), and grpc-js Workload API clients on the real Unix
 * socket. Checked with openssl and jose as well as with keel's own verifiers.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { fetchJwtCommand, fetchX509Command, validateJwtCommand, agentHealthcheckCommand, watchCommand } from '../../src/cli/agent/index.js';
import type { CliIo } from '../../src/cli/admin/io.js';
import type { AgentConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/log/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { bundleFromX509Der, parseDerCertificates, verifyX509Svid } from '../../src/spiffe/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { checkAgentKeyPublic, parseTpmtPublic, publicKeyFromTpmtPublic } from '../../src/tpm/index.js';
import { header, StreamReader, unary, workloadClient, type BundlesResponse, type WorkloadClient, type X509SvidResponse } from '../workload/client.js';
import { agentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

const run = promisify(execFile);
const td = TrustDomain.parse(TD);
const UID = process.getuid!();

interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

let sim: Swtpm;
let server: TestServer;
let dir: string;
let configFile: string;
let config: AgentConfig;
let agent: RunningAgent | undefined;
let client: WorkloadClient;
const logs: LogLine[] = [];

function memoryIo(): CliIo & { stdout: string[]; stderr: string[] } {
  const stdout: string[] = [];
  const stderr: string[] = [];
  return { stdout, stderr, out: (t) => void stdout.push(t), err: (t) => void stderr.push(t), readStdin: async () => '' };
}

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const logged = (msg: string, since = 0): LogLine[] => logs.slice(since).filter((l) => l.msg.startsWith(msg));

function svidsByPath(r: X509SvidResponse): Map<string, { leaf: X509Certificate; key: Buffer; bundle: Buffer; chain: Buffer }> {
  return new Map(
    r.svids.map((s) => [
      s.spiffe_id.slice(`spiffe://${TD}`.length),
      { leaf: parseDerCertificates(s.x509_svid)[0]!, key: s.x509_svid_key, bundle: s.bundle, chain: s.x509_svid },
    ]),
  );
}

async function fetchX509(): Promise<X509SvidResponse> {
  const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
  try {
    return await r.next();
  } finally {
    r.cancel();
  }
}

beforeAll(async () => {
  sim = await startSwtpm();
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 30 });
  await server.start();
  // A node group for every swtpm node, and two workload entries for this test's uid under it.
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  await server.store.createEntry({ spiffeId: td.child('/rotating'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${UID}`)], x509SvidTtl: 6 });
  await server.store.createEntry({ spiffeId: td.child('/stable'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${UID}`)], x509SvidTtl: 600, jwtSvidTtl: 60 });

  dir = await mkdtemp(join(tmpdir(), 'keel-agent-'));
  ({ file: configFile, config } = await agentConfig(dir, { serverAddress: server.address, tcti: sim.tcti, bootstrapPem: server.caPem, agent: ['log_level: debug', 'attestation_interval: 1'] }));
  agent = await startAgent({
    config,
    logger: createLogger({ level: 'debug', write: (l) => logs.push(JSON.parse(l) as LogLine) }),
    audit: () => undefined,
    tuning: { backoff: { initialMs: 200, maxMs: 2000 }, keepaliveMs: 5000 },
  });
  client = workloadClient(config.workload_api.socket_path);
}, 60_000);

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await server?.close();
  await sim?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('keel agent with swtpm, SoftHSM CA and the Node API', () => {
  it('attests the node and keeps the AK and agent-key blobs (TPM-wrapped) in data_dir with mode 0600; the SVID certifies the TPM key', async () => {
    expect(agent!.agentId).toMatch(new RegExp(`^spiffe://${TD}/keel/agent/tpm/[0-9a-f]{64}$`));
    const akFile = join(config.data_dir, 'ak-rsa-2048-ecc-p256.json');
    expect(statSync(akFile).mode & 0o777).toBe(0o600);
    expect(statSync(config.data_dir).mode & 0o777).toBe(0o700);
    const nodes = (await server.store.listNodes({}, { limit: 10 })).items;
    expect(nodes.map((n) => n.agentId.toString())).toEqual([agent!.agentId]);
    const ak = JSON.parse(await readFile(akFile, 'utf8')) as { public: string };
    // The AK the server recorded is the one on disk (its TPM name: nameAlg || sha256(TPMT_PUBLIC)).
    const name = '000b' + createHash('sha256').update(Buffer.from(ak.public, 'base64')).digest('hex');
    expect(nodes[0]!.akName).toBe(name);
    await until(() => existsSync(join(config.data_dir, 'bundle.json')), 5000, 'the bundle cache');
    // The agent key's private part is on disk only as the TPM wrapped it; the SVID certifies its public key.
    const keyFile = join(config.data_dir, 'agent-key-rsa-2048.json');
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const saved = JSON.parse(await readFile(keyFile, 'utf8')) as { public: string };
    const leaf = new X509Certificate(agent!.identity.chain[0]!);
    expect(leaf.publicKey.equals(publicKeyFromTpmtPublic(parseTpmtPublic(Buffer.from(saved.public, 'base64'))))).toBe(true);
    expect(() => checkAgentKeyPublic(Buffer.from(saved.public, 'base64'))).not.toThrow();
  });

  it('serves an X.509-SVID per entry for this uid that verifies against the bundle (keel and openssl)', async () => {
    const r = await fetchX509();
    const svids = svidsByPath(r);
    expect([...svids.keys()].sort()).toEqual(['/rotating', '/stable']);
    const bundle = bundleFromX509Der(TD, svids.get('/stable')!.bundle);
    for (const [path, s] of svids) {
      expect(verifyX509Svid(parseDerCertificates(s.chain), bundle).id.toString()).toBe(`spiffe://${TD}${path}`);
      const key = createPrivateKey({ key: s.key, format: 'der', type: 'pkcs8' });
      expect(key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect(s.leaf.publicKey.equals(createPublicKey(key))).toBe(true);
    }
    expect(svids.get('/rotating')!.key.equals(svids.get('/stable')!.key)).toBe(false);

    // The same through `keel agent api fetch x509 --write`, checked by openssl.
    const out = join(dir, 'svid-out');
    const io = memoryIo();
    expect(await fetchX509Command(io).run(['--socket', config.workload_api.socket_path, '--write', out])).toBe(0);
    expect(io.stdout.join('\n')).toContain(`spiffe://${TD}/stable`);
    expect(statSync(join(out, 'svid.key')).mode & 0o777).toBe(0o600);
    for (const suffix of ['', '.1']) {
      const v = await run('openssl', ['verify', '-CAfile', join(out, `bundle${suffix}.pem`), join(out, `svid${suffix}.pem`)]);
      expect(v.stdout).toContain(': OK');
      const certPub = (await run('openssl', ['x509', '-in', join(out, `svid${suffix}.pem`), '-noout', '-pubkey'])).stdout;
      const keyPub = (await run('openssl', ['pkey', '-in', join(out, `svid${suffix}.key`), '-pubout'])).stdout;
      expect(certPub).toBe(keyPub);
    }
  });

  it('serves a JWT-SVID that validates (agent, jose against the JWT bundle, and the CLI)', async () => {
    const jwt = await unary<{ svids: { spiffe_id: string; svid: string }[] }>(client, 'FetchJWTSVID', { audience: ['db'], spiffe_id: `spiffe://${TD}/stable` });
    expect(jwt.svids).toHaveLength(1);
    const token = jwt.svids[0]!.svid;
    const again = await unary<{ svids: { svid: string }[] }>(client, 'FetchJWTSVID', { audience: ['db'], spiffe_id: `spiffe://${TD}/stable` });
    expect(again.svids[0]!.svid).toBe(token); // cached

    const valid = await unary<{ spiffe_id: string }>(client, 'ValidateJWTSVID', { audience: 'db', svid: token });
    expect(valid.spiffe_id).toBe(`spiffe://${TD}/stable`);
    const bundles = new StreamReader<BundlesResponse>(client.FetchJWTBundles({}, header()));
    const jwks = JSON.parse((await bundles.next()).bundles[`spiffe://${TD}`]!.toString()) as { keys: Record<string, unknown>[] };
    bundles.cancel();
    // jose takes only keys whose `use` is absent or "sig"; a SPIFFE bundle says "jwt-svid".
    const keys = jwks.keys.map(({ use: _use, ...k }) => k);
    const verified = await jwtVerify(token, createLocalJWKSet({ keys } as never), { audience: 'db' });
    expect(verified.payload.sub).toBe(`spiffe://${TD}/stable`);
    const wrongAudience = await unary(client, 'ValidateJWTSVID', { audience: 'web', svid: token }).catch((e: grpc.ServiceError) => e);
    expect((wrongAudience as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);

    const io = memoryIo();
    expect(await fetchJwtCommand(io).run(['--socket', `unix://${config.workload_api.socket_path}`, '--audience', 'db', '--spiffe-id', `spiffe://${TD}/stable`])).toBe(0);
    const cliToken = io.stdout[0]!.split('\n')[0]!;
    const vio = memoryIo();
    expect(await validateJwtCommand(vio).run(['--socket', config.workload_api.socket_path, '--audience', 'db', '--svid', cliToken])).toBe(0);
    expect(vio.stdout.join('\n')).toContain(`SPIFFE ID: spiffe://${TD}/stable`);
    const bad = memoryIo();
    expect(await validateJwtCommand(bad).run(['--socket', config.workload_api.socket_path, '--audience', 'nope', '--svid', cliToken])).toBe(1);
    expect(bad.stderr.join('\n')).toMatch(/not valid/);
    const hio = memoryIo();
    expect(await agentHealthcheckCommand(hio).run(['--socket', config.workload_api.socket_path])).toBe(0);
  });

  it('rotates the short-lived SVID with a new key and streams the update', async () => {
    const stream = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    try {
      const first = svidsByPath(await stream.next()).get('/rotating')!;
      // `keel agent api watch` sees the same stream.
      const wio = memoryIo();
      const watching = watchCommand(wio, () => new Promise(() => undefined)).run(['--socket', config.workload_api.socket_path, '--updates', '2']);
      const next = svidsByPath(await stream.next(8000)).get('/rotating')!;
      expect(await watching).toBe(0);
      expect(wio.stdout.join('\n')).toMatch(/update 2: .*spiffe:\/\/example.org\/rotating/);
      expect(next.leaf.serialNumber).not.toBe(first.leaf.serialNumber);
      expect(next.key.equals(first.key)).toBe(false);
      expect(new Date(next.leaf.validTo).getTime()).toBeGreaterThan(new Date(first.leaf.validTo).getTime());
    } finally {
      stream.cancel();
    }
  });

  it('renews its own SVID at half-life with a fresh quote', async () => {
    const before = new X509Certificate(agent!.identity.chain[0]!).serialNumber;
    const renewedAudits = () => server.audit.events.filter((e) => e.event === 'node.renewed').length;
    const audits = renewedAudits();
    await until(() => new X509Certificate(agent!.identity.chain[0]!).serialNumber !== before, 20_000, 'agent SVID renewal');
    expect(renewedAudits()).toBeGreaterThan(audits);
    expect(logged('agent SVID renewed').length).toBeGreaterThan(0);
  }, 30_000);

  it('keeps serving while the server is down, reconnects with backoff, and recovers when it is back', async () => {
    const mark = logs.length;
    await server.stop();
    await until(() => logged('server unreachable, retrying in', mark).length >= 2, 10_000, 'reconnection attempts');
    // Still served from the cache: the long-lived SVID and the cached JWT.
    const during = svidsByPath(await fetchX509());
    expect(during.has('/stable')).toBe(true);
    const jwt = await unary<{ svids: { svid: string }[] }>(client, 'FetchJWTSVID', { audience: ['db'], spiffe_id: `spiffe://${TD}/stable` });
    expect(jwt.svids).toHaveLength(1);
    const stableSerial = during.get('/stable')!.leaf.serialNumber;

    await server.start();
    await until(() => logged('reconnected to the server', mark).length === 1, 15_000, 'reconnection');
    // Rotation resumes: the short-lived SVID is issued again after the outage.
    const after = Date.now();
    await until(
      async () => {
        const s = svidsByPath(await fetchX509()).get('/rotating');
        return s !== undefined && new Date(s.leaf.validFrom).getTime() + 10_000 >= after - 1000;
      },
      15_000,
      'a new SVID after recovery',
    );
    expect(svidsByPath(await fetchX509()).get('/stable')!.leaf.serialNumber).toBe(stableSerial);
  }, 45_000);

  it('removing an entry drops its SVID from the stream', async () => {
    const stream = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    try {
      expect(svidsByPath(await stream.next()).has('/rotating')).toBe(true);
      const rotating = (await server.store.listEntries({ spiffeId: td.child('/rotating') })).items[0]!;
      await server.store.deleteEntry(rotating.id);
      for (;;) {
        const m = svidsByPath(await stream.next(8000));
        if (!m.has('/rotating')) {
          expect([...m.keys()]).toEqual(['/stable']);
          break;
        }
      }
    } finally {
      stream.cancel();
    }
  });

  it('a node that drifts out of policy loses every identity within one attestation interval: the server names the PCR, open streams end, PermissionDenied', async () => {
    const mark = logs.length;
    const auditMark = server.audit.events.length;
    expect(svidsByPath(await fetchX509()).has('/stable')).toBe(true);
    const stream = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    await stream.next();
    // PCR 0 is no longer what swtpm-dev allows.
    await agent!.tpm.pcrExtend(0, { sha256: createHash('sha256').update('drift').digest() });
    // attestation_interval is 1 s; the margin covers a quote, the round trip and a loaded CI machine.
    await until(async () => (await fetchX509().catch((e: grpc.ServiceError) => e)) instanceof Error, 1000 + 5000, 'PermissionDenied after the drift');
    const err = await fetchX509().catch((e: grpc.ServiceError) => e);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.PERMISSION_DENIED);
    const jwt = await unary(client, 'FetchJWTSVID', { audience: ['db'] }).catch((e: grpc.ServiceError) => e);
    expect((jwt as grpc.ServiceError).code).toBe(grpc.status.PERMISSION_DENIED);
    // The open stream no longer carries an SVID.
    const after = await stream.next().catch((e: grpc.ServiceError) => e);
    expect(after instanceof Error ? (after as grpc.ServiceError).code === grpc.status.PERMISSION_DENIED : (after as X509SvidResponse).svids.length === 0).toBe(true);
    stream.cancel();
    const drifted = server.audit.events.slice(auditMark).find((e) => e.event === 'node.drifted') as { detail: string } | undefined;
    expect(drifted?.detail).toMatch(/pcrs\.0/);
    expect(logs.slice(mark).some((l) => l.level === 'error' && /no longer accepts this node's identity \(policy\)/.test(l.msg))).toBe(true);
    const node = (await server.store.listNodes({}, { limit: 10 })).items[0]!;
    expect(node.status.kind).toBe('drifted');
  }, 30_000);
});

describe('keel agent run', () => {
  it('stops cleanly on SIGTERM, removing its socket; after a power cycle the drifted node attests again with the same AK', async () => {
    await agent!.stop();
    agent = undefined;
    // A power cycle of the same TPM (same EK, same state) undoes the drift: PCRs start from zero again.
    const oldTcti = sim.tcti;
    await sim.restart();
    // The restarted swtpm listens on a new port.
    await writeFile(configFile, (await readFile(configFile, 'utf8')).replace(oldTcti, sim.tcti));
    const nodesBefore = (await server.store.listNodes({}, { limit: 10 })).items;
    const script = `import { agentRunCommand } from ${JSON.stringify(new URL('../../src/cli/agent/run.ts', import.meta.url).pathname)}; process.exitCode = await agentRunCommand.run(['--config', ${JSON.stringify(configFile)}]);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      await until(() => stderr.includes('Workload API listening'), 30_000, 'the agent process to serve').catch((e: Error) => {
        throw new Error(`${e.message}; its log:\n${stderr.slice(-3000)}`);
      });
      const r = await fetchX509();
      expect(svidsByPath(r).has('/stable')).toBe(true);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(stderr).toContain('agent stopped');
      expect(existsSync(config.workload_api.socket_path)).toBe(false);
      const nodesAfter = (await server.store.listNodes({}, { limit: 10 })).items;
      expect(nodesAfter.map((n) => [n.agentId.toString(), n.akName])).toEqual(nodesBefore.map((n) => [n.agentId.toString(), n.akName]));
      // The node drifted above; after the power cycle it is back in policy and attested again.
      expect(nodesBefore[0]!.status.kind).toBe('drifted');
      expect(nodesAfter[0]!.status.kind).toBe('active');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 60_000);
});
