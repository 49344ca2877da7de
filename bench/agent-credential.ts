/**
 * What binding the agent's credential to its TPM costs, and how fast drift is
 * caught.
 *
 * 1. The channel binding: one TPM2_Sign (swtpm, ECDSA P-256) per connection
 *    against a node:crypto ECDSA P-256 sign of the same message (the cost a
 *    software key would have), and a whole bound TLS connection set-up
 *    (TCP + TLS 1.3 + binding frame + answer) against an anonymous one.
 * 2. Drift: a running agent with `attestation_interval` = 1 s; PCR 0 extended
 *    under it; the time until the Workload API answers PermissionDenied, as a
 *    ratio to the interval (the goal: ≤ 1 interval plus the quote and a round trip).
 *
 *   node --import tsx bench/agent-credential.ts [runs, default 200] [drift runs, default 5]
 */
import { createHash, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { startSwtpm } from '../simulator/swtpm.js';
import { startAgent } from '../src/agent/agent.js';
import { NodeApiClient, attestNode, credentialOf, tpmAgentKey } from '../src/agent/attestation/index.js';
import { PROTO_LOADER_OPTIONS, workloadProtoPath } from '../src/agent/workload/proto.js';
import { createLogger } from '../src/log/index.js';
import { parseSelector, serverIdOf } from '../src/server/store/index.js';
import { TrustDomain } from '../src/spiffe/id.js';
import { TpmDevice } from '../src/tpm/device.js';
import { agentConfig } from '../test/agent/agent-config.js';
import { TD, TestServer } from '../test/agent/server-harness.js';

const RUNS = Number(process.argv[2] ?? 200);
const DRIFT_RUNS = Number(process.argv[3] ?? 5);
const UID = process.getuid!();
const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const sim = await startSwtpm();
const server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 3600 });
await server.start();
const td = TrustDomain.parse(TD);
const rows: [string, string][] = [];

// ── 1. the binding ─────────────────────────────────────────────────────────
{
  const device = await TpmDevice.open(sim.tcti);
  const key = await device.loadAgentKey('rsa-2048', await device.createAgentKey('rsa-2048'));
  const soft = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const message = randomBytes(65);
  const tpmTimes: number[] = [];
  const softTimes: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    let t0 = process.hrtime.bigint();
    await device.sign(key, createHash('sha256').update(message).digest());
    tpmTimes.push(ms(t0));
    t0 = process.hrtime.bigint();
    sign('sha256', message, soft);
    softTimes.push(ms(t0));
  }
  rows.push(['binding signature, TPM2_Sign (swtpm), median', `${median(tpmTimes).toFixed(3)} ms`]);
  rows.push(['binding signature, node:crypto ECDSA P-256, median', `${median(softTimes).toFixed(3)} ms`]);
  rows.push(['TPM sign / node:crypto sign', `${(median(tpmTimes) / median(softTimes)).toFixed(1)}×`]);

  const svid = await attestNode({ device, ekKind: 'rsa-2048', agentKey: key, serverAddress: server.address, serverCaBundle: server.caPem, trustDomain: TD });
  const cred = credentialOf(svid.svidChain, tpmAgentKey(device, key));
  const connect = async (bound: boolean): Promise<number> => {
    const c = new NodeApiClient({ address: server.address, serverCaBundle: server.caPem, trustDomain: TD, ...(bound ? { clientSvid: cred } : {}) });
    const t0 = process.hrtime.bigint();
    // A call that needs the connection: bound → SignJwtSvid refused per item (no entry); anonymous → refused unauthenticated.
    await c.signJwtSvid('none', ['x']).catch(() => undefined);
    const t = ms(t0);
    c.close();
    return t;
  };
  const boundTimes: number[] = [];
  const anonTimes: number[] = [];
  for (let i = 0; i < Math.min(RUNS, 100); i++) {
    anonTimes.push(await connect(false));
    boundTimes.push(await connect(true));
  }
  rows.push(['new connection + first call, anonymous, median', `${median(anonTimes).toFixed(2)} ms`]);
  rows.push(['new connection + first call, bound with the TPM key, median', `${median(boundTimes).toFixed(2)} ms`]);
  rows.push(['bound / anonymous connection', `${(median(boundTimes) / median(anonTimes)).toFixed(2)}×`]);
  await device.flush(key);
  await device.close();
}

// ── 2. drift → PermissionDenied ───────────────────────────────────────────
{
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  await server.store.createEntry({ spiffeId: td.child('/w'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${UID}`)], x509SvidTtl: 3600 });
  const Workload = grpc.loadPackageDefinition(loadSync(workloadProtoPath(), PROTO_LOADER_OPTIONS)).SpiffeWorkloadAPI as unknown as new (
    t: string,
    c: grpc.ChannelCredentials,
  ) => grpc.Client & { FetchJWTSVID: (r: object, md: grpc.Metadata, cb: (e: grpc.ServiceError | null) => void) => void };
  const intervalS = 1;
  const ratios: number[] = [];
  for (let run = 0; run < DRIFT_RUNS; run++) {
    await sim.restart(); // PCRs from zero: the node is in policy again
    const root = await mkdtemp(join(tmpdir(), 'keel-bench-drift-'));
    const { config } = await agentConfig(root, {
      serverAddress: server.address,
      tcti: sim.tcti,
      bootstrapPem: server.caPem,
      agent: [`attestation_interval: ${intervalS}`],
      eventLog: 'none.bin',
      socketPath: join(root, 'api.sock'),
    });
    const agent = await startAgent({ config, logger: createLogger({ level: 'error', write: () => undefined }), audit: () => undefined });
    const client = new Workload(`unix://${config.workload_api.socket_path}`, grpc.credentials.createInsecure());
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    const code = (): Promise<number> => new Promise((resolve) => client.FetchJWTSVID({ audience: ['a'] }, md, (e) => resolve(e ? e.code : 0)));
    if ((await code()) !== 0) throw new Error('the agent does not serve before the drift');
    const t0 = process.hrtime.bigint();
    await agent.tpm.pcrExtend(0, { sha256: createHash('sha256').update(`drift ${run}`).digest() });
    while ((await code()) !== grpc.status.PERMISSION_DENIED) await new Promise((r) => setTimeout(r, 5));
    ratios.push(ms(t0) / (intervalS * 1000));
    client.close();
    await agent.stop();
    await rm(root, { recursive: true, force: true });
  }
  rows.push([`PCR extend → PermissionDenied / attestation_interval (${intervalS} s), median of ${DRIFT_RUNS}`, `${median(ratios).toFixed(2)}`]);
  rows.push(['… worst', `${Math.max(...ratios).toFixed(2)}`]);
}

await server.close();
await sim.stop();
console.log('| measurement | value |\n| --- | --- |\n' + rows.map(([a, b]) => `| ${a} | ${b} |`).join('\n'));
