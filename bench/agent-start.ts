/**
 * Agent start-up, end to end: from `startAgent(...)` being called (server
 * running, entries registered, a fresh data_dir so the node attests from
 * scratch) to the first X.509-SVID a grpc-js client reads from the Workload
 * API socket. The limit, measured in the same run against the same server and
 * swtpm: node attestation alone (`attestNode`, TPM opened and a new AK made,
 * as a fresh data_dir makes one). What is left over is keel's: the first
 * SyncEntries, key generation and SignX509Svids for the entries, the socket,
 * and workload attestation of the caller.
 *
 * Runs alternate (limit, agent, limit, agent, …) so that a noisy neighbour
 * slows both alike.
 *
 *   node --import tsx bench/agent-start.ts [runs, default 10] [entries, default 10]
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { startSwtpm } from '../simulator/swtpm.js';
import { startAgent } from '../src/agent/agent.js';
import { attestNode } from '../src/agent/attestation/index.js';
import { PROTO_LOADER_OPTIONS, workloadProtoPath } from '../src/agent/workload/proto.js';
import { createLogger } from '../src/log/index.js';
import { parseSelector, serverIdOf } from '../src/server/store/index.js';
import { TrustDomain } from '../src/spiffe/id.js';
import { TpmDevice } from '../src/tpm/device.js';
import { agentConfig } from '../test/agent/agent-config.js';
import { TD, TestServer } from '../test/agent/server-harness.js';

const RUNS = Number(process.argv[2] ?? 10);
const ENTRIES = Number(process.argv[3] ?? 10);
const UID = process.getuid!();

type ServerStream = (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<{ svids: { spiffe_id: string }[] }>;
const WorkloadClient = grpc.loadPackageDefinition(loadSync(workloadProtoPath(), PROTO_LOADER_OPTIONS)).SpiffeWorkloadAPI as unknown as new (
  target: string,
  creds: grpc.ChannelCredentials,
  opts?: object,
) => grpc.Client & { FetchX509SVID: ServerStream };

/** The first FetchX509SVID message on a new connection; resolves with the number of SVIDs in it. */
function firstX509Svid(socketPath: string): Promise<number> {
  const client = new WorkloadClient(`unix://${socketPath}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  return new Promise<number>((resolve, reject) => {
    const call = client.FetchX509SVID({}, md);
    let done = false;
    call.on('data', (m) => {
      if (done) return;
      done = true;
      resolve(m.svids.length);
      call.cancel();
    });
    call.on('error', (e: grpc.ServiceError) => {
      if (!done) reject(e);
      done = true;
    });
  }).finally(() => client.close());
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

// ── server, swtpm, entries ────────────────────────────────────────────────
const sim = await startSwtpm();
const server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 3600 });
await server.start();
const td = TrustDomain.parse(TD);
const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
// One entry for the benchmark's own uid (what the client receives), the rest for other uids: the agent still signs them all at start.
for (let i = 0; i < ENTRIES; i++) {
  await server.store.createEntry({ spiffeId: td.child(`/bench/w${i}`), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${i === 0 ? UID : 20_000 + i}`)], x509SvidTtl: 3600 });
}
const root = await mkdtemp(join(tmpdir(), 'keel-bench-agent-start-'));
const bootstrap = join(root, 'bootstrap.pem');
await writeFile(bootstrap, server.caPem);
const logger = createLogger({ level: 'error', write: () => undefined });

/** The limit: open the TPM and attest with a new AK, as a fresh data_dir does. */
async function attestAlone(withAk?: Awaited<ReturnType<TpmDevice['createAk']>>): Promise<number> {
  const t0 = process.hrtime.bigint();
  const device = await TpmDevice.open(sim.tcti);
  try {
    await attestNode({
      device,
      ekKind: 'rsa-2048',
      akKind: 'ecc-p256',
      ...(withAk ? { akBlobs: withAk } : {}),
      // A fresh data_dir: the agent makes its agent key in the TPM too.
      agentKey: await device.loadAgentKey('rsa-2048', await device.createAgentKey('rsa-2048')),
      serverAddress: server.address,
      serverCaBundle: server.caPem,
      trustDomain: TD,
    });
    return ms(t0);
  } finally {
    await device.close();
  }
}

async function agentStart(run: number): Promise<{ total: number; started: number }> {
  const dir = join(root, `run-${run}`);
  const { config } = await agentConfig(root, {
    serverAddress: server.address,
    tcti: sim.tcti,
    file: `run-${run}.yaml`,
    bundle: bootstrap,
    dataDir: join(dir, 'data'),
    agent: ['log_level: error'],
    eventLog: join(dir, 'no-event-log.bin'),
    socketPath: join(dir, 'api.sock'),
  });
  const t0 = process.hrtime.bigint();
  const agent = await startAgent({ config, logger, audit: () => undefined });
  const started = ms(t0);
  try {
    const n = await firstX509Svid(agent.socketPath);
    const total = ms(t0);
    if (n !== 1) throw new Error(`expected 1 SVID for uid ${UID}, got ${n}`);
    return { total, started };
  } finally {
    await agent.stop();
  }
}

const limit: number[] = [];
const limitSavedAk: number[] = [];
const total: number[] = [];
const started: number[] = [];
try {
  // Warm-up (JIT, TLS session setup paths, first HSM use), not counted.
  await attestAlone();
  await agentStart(-1);
  const device = await TpmDevice.open(sim.tcti);
  const savedAk = await device.createAk('rsa-2048', 'ecc-p256');
  await device.close();
  for (let i = 0; i < RUNS; i++) {
    limit.push(await attestAlone());
    limitSavedAk.push(await attestAlone(savedAk));
    const r = await agentStart(i);
    total.push(r.total);
    started.push(r.started);
  }
} finally {
  await server.close();
  await sim.stop();
  await rm(root, { recursive: true, force: true });
}

const sorted = (a: number[]): number[] => [...a].sort((x, y) => x - y);
const [T, S, L, LA] = [sorted(total), sorted(started), sorted(limit), sorted(limitSavedAk)];
const f = (v: number): string => v.toFixed(1);
const rows: [string, string, string][] = [
  ['runs (entries registered)', `${RUNS} (${ENTRIES})`, ''],
  ['agent start → first X.509-SVID, p50', f(percentile(T, 50)), 'ms'],
  ['agent start → first X.509-SVID, p99', f(percentile(T, 99)), 'ms'],
  ['  of which startAgent() resolved, p50', f(percentile(S, 50)), 'ms'],
  ['limit: attestNode alone (TPM open + new AK), p50', f(percentile(L, 50)), 'ms'],
  ['limit: attestNode alone (TPM open + new AK), p99', f(percentile(L, 99)), 'ms'],
  ['attestNode with a saved AK, p50 (for reference)', f(percentile(LA, 50)), 'ms'],
  ['start / limit, p50', (percentile(T, 50) / percentile(L, 50)).toFixed(2), '×'],
  ['start / limit, p99', (percentile(T, 99) / percentile(L, 99)).toFixed(2), '×'],
  ['keel overhead over the limit, p50', f(percentile(T, 50) - percentile(L, 50)), 'ms'],
];
console.log('| name | value | unit |');
console.log('| --- | --- | --- |');
for (const [n, v, u] of rows) console.log(`| ${n} | ${v} | ${u} |`);
