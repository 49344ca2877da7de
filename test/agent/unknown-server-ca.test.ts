/**
 * An agent that meets a server CA it does not know (issue 15: it missed a CA
 * rotation, so neither its cached bundle nor its bootstrap bundle has the
 * server's current CA). The TLS failure is not a retryable "server
 * unreachable": the agent says the server's CA is unknown, reads
 * server.bundle again on each attempt, and never trusts a bundle the server
 * sends unauthenticated. Once server.bundle holds the current bundle it
 * attests with no restart. Real swtpm, SoftHSM CA, SQLite, TCP + TLS.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { createLogger } from '../../src/log/index.js';
import { agentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

interface LogLine {
  level: string;
  msg: string;
  reason?: string;
  [k: string]: unknown;
}

let sim: Swtpm;
let server: TestServer;
let dir: string;
let agent: RunningAgent | undefined;
const logs: LogLine[] = [];

beforeAll(async () => {
  sim = await startSwtpm();
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 600 });
  await server.start();
  dir = await mkdtemp(join(tmpdir(), 'keel-agent-unknown-ca-'));
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  await server?.close();
  await sim?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('an agent whose trust has no path to the server CA', () => {
  it('reports the unknown CA (not "server unreachable"), re-reads server.bundle, and attests once it holds the current bundle', async () => {
    // A CA certificate that did not issue the server's: what an agent that missed the rotation holds.
    const bundleFile = join(dir, 'bootstrap.pem');
    const { config } = await agentConfig(dir, { serverAddress: server.address, tcti: sim.tcti, bootstrapPem: sim.manufacturerCaPems[0]!, agent: ['attestation_interval: 0'] });
    const unknown = (): LogLine[] => logs.filter((l) => l.msg.startsWith("the server's certificate chains to no CA this agent trusts"));
    let onThird: (() => void) | undefined;
    const third = new Promise<void>((r) => (onThird = r));
    const started = startAgent({
      config,
      logger: createLogger({
        level: 'debug',
        write: (l) => {
          logs.push(JSON.parse(l) as LogLine);
          if (unknown().length === 3) onThird!();
        },
      }),
      audit: () => undefined,
      tuning: { backoff: { initialMs: 100, maxMs: 400 } },
    });
    await third;
    for (const l of unknown()) {
      expect(l.level).toBe('error');
      expect(l.reason).toBe('server-certificate-untrusted');
    }
    expect(logs.some((l) => l.msg.startsWith('server unreachable'))).toBe(false);
    // Each attempt read server.bundle again and found nothing new.
    expect(logs.filter((l) => l.msg.includes('neither the cached bundle nor server.bundle has it')).length).toBeGreaterThanOrEqual(3);
    const attested = logs.filter((l) => l.msg === 'node attested');
    expect(attested).toHaveLength(0);

    // The operator puts the server's current bundle in server.bundle: the next attempt uses it.
    await writeFile(bundleFile, server.caPem);
    agent = await started;
    expect(logs.some((l) => l.msg.startsWith("the server's CA is not one this agent trusts (a CA rotation it missed?): server.bundle changed on disk"))).toBe(true);
    expect(agent.agentId).toMatch(new RegExp(`^spiffe://${TD}/keel/agent/tpm/[0-9a-f]{64}$`));
  });
});
