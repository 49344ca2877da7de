/**
 * An agent configured with two servers on one store (issue 10): when the one
 * it talks to dies, it moves to the other without re-attesting, renews its
 * own SVID and the workloads' there, and an open FetchX509SVID stream never
 * goes without its SVID. Real swtpm, SoftHSM CA, SQLite, two Node API
 * listeners on TCP + TLS, startAgent.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { createLogger } from '../../src/log/index.js';
import type { NodeApiServer } from '../../src/server/node-api/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { parseDerCertificates, verifyX509Svid } from '../../src/spiffe/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { header, StreamReader, workloadClient, type WorkloadClient, type X509SvidResponse } from '../workload/client.js';
import { agentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

const td = TrustDomain.parse(TD);
const WEB = `spiffe://${TD}/web`;

interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

let sim: Swtpm;
let server: TestServer;
let replica: NodeApiServer | undefined;
let dir: string;
let agent: RunningAgent | undefined;
let client: WorkloadClient | undefined;
const logs: LogLine[] = [];

beforeAll(async () => {
  sim = await startSwtpm();
  // Agent SVIDs of 8 s and workload SVIDs of 6 s: several renewals fit in the test.
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 8 });
  await server.start();
  replica = await server.startReplica();
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  await server.store.createEntry({ spiffeId: td.child('/web'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${process.getuid!()}`)], x509SvidTtl: 6 });
  dir = await mkdtemp(join(tmpdir(), 'keel-agent-failover-'));
}, 60_000);

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await replica?.close();
  await server?.close();
  await sim?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const count = (event: string, since = 0): number => server.audit.events.slice(since).filter((e) => e.event === event).length;

describe('an agent with two servers, the first one dying', () => {
  it('moves to the second without re-attesting; its SVID and the workload SVID are renewed there; the stream never lacks the SVID', async () => {
    const { config } = await agentConfig(dir, {
      serverAddress: [server.address, `127.0.0.1:${replica!.port}`],
      tcti: sim.tcti,
      bootstrapPem: server.caPem,
      agent: ['attestation_interval: 0'],
    });
    expect(config.server.address).toHaveLength(2);
    agent = await startAgent({
      config,
      logger: createLogger({ level: 'info', write: (l) => void logs.push(JSON.parse(l) as LogLine) }),
      audit: () => undefined,
      tuning: { backoff: { initialMs: 100, maxMs: 500 }, keepaliveMs: 1000 },
    });
    expect(count('node.attested')).toBe(1);
    client = workloadClient(config.workload_api.socket_path);
    const stream = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    const serials: string[] = [];
    const read = async (): Promise<void> => {
      const m = await stream.next(15_000);
      const s = m.svids.find((x) => x.spiffe_id === WEB);
      expect(s, 'every message carries the SVID').toBeDefined();
      const chain = parseDerCertificates(s!.x509_svid);
      expect(verifyX509Svid(chain, server.ca.bundle()).id.toString()).toBe(WEB);
      serials.push(chain[0]!.serialNumber);
    };
    try {
      await read();

      // The first server goes away (its listener closes; connections end).
      const mark = server.audit.events.length;
      await server.stop();

      // Two more workload renewals and two agent renewals, all by the second server.
      const end = Date.now() + 40_000;
      while ((new Set(serials).size < 3 || count('node.renewed', mark) < 2) && Date.now() < end) await read();
      expect(new Set(serials).size).toBeGreaterThanOrEqual(3);
      expect(count('node.renewed', mark)).toBeGreaterThanOrEqual(2);
      expect(count('svid.x509_issued', mark)).toBeGreaterThanOrEqual(2);
      // No new attestation, and the agent said where it went.
      expect(count('node.attested')).toBe(1);
      expect(logs.filter((l) => l.msg.startsWith('node attested'))).toHaveLength(1);
      const moved = logs.filter((l) => l.msg.startsWith('server unreachable, moving to the next server'));
      expect(moved.length).toBeGreaterThanOrEqual(1);
      expect(moved[0]).toMatchObject({ from: server.address, to: `127.0.0.1:${replica!.port}` });
    } finally {
      stream.cancel();
    }
  }, 90_000);
});
