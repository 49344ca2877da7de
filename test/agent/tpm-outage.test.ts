/**
 * The agent across a TPM outage (issue 15): swtpm goes away during a renewal
 * and comes back on the same port with its state. Failures are TPM errors,
 * each a warning, never "server unreachable"; once the TPM is back the agent
 * renews on the same TpmDevice (reopened by itself, the agent key reloaded)
 * and keeps serving, with nothing left loaded in the TPM but the agent key.
 * Real swtpm, SoftHSM CA, SQLite, Node API over TCP + TLS, Workload API on a UDS.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { createLogger } from '../../src/log/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { firstOf, header, workloadClient, type WorkloadClient, type X509SvidResponse } from '../workload/client.js';
import { agentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

interface LogLine {
  level: string;
  msg: string;
  component?: string;
  reason?: string;
  [k: string]: unknown;
}

const td = TrustDomain.parse(TD);
let sim: Swtpm;
let server: TestServer;
let dir: string;
let agent: RunningAgent | undefined;
let client: WorkloadClient;
const logs: LogLine[] = [];

beforeAll(async () => {
  sim = await startSwtpm();
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 600 });
  await server.start();
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  await server.store.createEntry({ spiffeId: td.child('/web'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${process.getuid!()}`)], x509SvidTtl: 600 });
  dir = await mkdtemp(join(tmpdir(), 'keel-agent-tpm-outage-'));
  const { config } = await agentConfig(dir, { serverAddress: server.address, tcti: sim.tcti, bootstrapPem: server.caPem, agent: ['log_level: debug', 'attestation_interval: 0'] });
  agent = await startAgent({
    config,
    logger: createLogger({ level: 'debug', write: (l) => logs.push(JSON.parse(l) as LogLine) }),
    audit: () => undefined,
    tuning: { backoff: { initialMs: 100, maxMs: 1000 }, keepaliveMs: 5000 },
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

const fetchX509 = (): Promise<X509SvidResponse> => firstOf<X509SvidResponse>(client.FetchX509SVID({}, header()));

describe('agent and a TPM that goes away', () => {
  it('reports TPM failures as TPM warnings, and renews on the reopened device once swtpm is back', async () => {
    const a = agent!;
    expect((await fetchX509()).svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/web`]);
    const before = a.identity;

    await sim.halt();
    const since = logs.length;
    // Renewals during the outage: each fails on the TPM.
    for (let i = 0; i < 3; i++) await a.renewAgentSvidNow();
    expect(a.identity).toBe(before);
    const outage = logs.slice(since);
    const renewalFailures = outage.filter((l) => l.component === 'agent-svid' && l.level !== 'info');
    expect(renewalFailures).toHaveLength(3);
    for (const l of renewalFailures) {
      expect(l.level).toBe('warn');
      expect(l.reason).toBe('tpm');
      expect(l.msg).toMatch(/^the TPM failed during agent SVID renewal, retrying in/);
      expect(String(l.detail)).not.toMatch(/wrong order/);
    }
    expect(outage.some((l) => l.msg.startsWith('server unreachable'))).toBe(false);
    expect(outage.filter((l) => l.component === 'tpm' && l.msg === 'lost the connection to the TPM; reconnecting')).toHaveLength(1);
    // Workloads keep their SVIDs meanwhile.
    expect((await fetchX509()).svids).toHaveLength(1);

    await sim.resume();
    for (let i = 0; i < 200 && a.identity === before; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await a.renewAgentSvidNow();
    }
    expect(a.identity).not.toBe(before);
    expect(a.identity.expiresAt.getTime()).toBeGreaterThanOrEqual(before.expiresAt.getTime());
    expect(a.tpm.connectionLost).toBe(false);
    expect(logs.slice(since).some((l) => l.component === 'tpm' && l.msg.startsWith('the TPM connection is back'))).toBe(true);
    expect(logs.slice(since).some((l) => l.msg === 'agent SVID renewed')).toBe(true);
    // The renewed SVID still certifies the same TPM key, reloaded from its blobs.
    const { X509Certificate } = await import('node:crypto');
    expect(new X509Certificate(a.identity.chain[0]!).publicKey.equals(new X509Certificate(before.chain[0]!).publicKey)).toBe(true);
    // Only the agent key is loaded; the AK was flushed after its quote; no session left.
    const loaded = await a.tpm.loadedHandles();
    expect(loaded.sessions).toEqual([]);
    expect(loaded.transient).toHaveLength(1);
    expect((await fetchX509()).svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/web`]);
  });
});
