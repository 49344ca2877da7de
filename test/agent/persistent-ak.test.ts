/**
 * `agent.tpm.ak_persistent_handle` and `agent_key_persistent_handle`: the
 * agent makes its AK and its agent key once, persists them at the handles,
 * and after a restart quotes with the same AK and gets its SVID for the same
 * agent key, from the TPM (no blobs on disk). Real swtpm, SoftHSM CA, Node API over TLS.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent } from '../../src/agent/agent.js';
import { agentConfigSchema, loadConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/log/index.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { writeAgentConfig } from './agent-config.js';
import { TestServer } from './server-harness.js';

const run = promisify(execFile);
const HANDLE = 0x81010020;
const KEY_HANDLE = 0x81010021;

describe('agent with a persistent AK', () => {
  let sim: Swtpm;
  let server: TestServer;
  let dir: string;

  beforeAll(async () => {
    sim = await startSwtpm();
    server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 3600 });
    await server.start();
    dir = await mkdtemp(join(tmpdir(), 'keel-persistent-ak-'));
    await writeAgentConfig(dir, {
      serverAddress: server.address,
      tcti: sim.tcti,
      bootstrapPem: server.caPem,
      tpm: [`ak_persistent_handle: "0x${HANDLE.toString(16)}"`, `agent_key_persistent_handle: "0x${KEY_HANDLE.toString(16)}"`],
      eventLog: 'none.bin',
    });
  }, 90_000);
  afterAll(async () => {
    await server?.close();
    await sim?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const start = () =>
    startAgent({
      config: loadConfig(join(dir, 'agent.yaml'), agentConfigSchema).agent,
      logger: createLogger({ level: 'error', write: () => undefined }),
      audit: () => undefined,
      tuning: { backoff: { initialMs: 200, maxMs: 2000 } },
    });

  it('persists the AK and the agent key at their handles once, and uses the same ones after a restart', async () => {
    const first = await start();
    const node1 = await server.store.getNode(SpiffeId.parse(first.agentId));
    const key1 = new X509Certificate(first.identity.chain[0]!).publicKey;
    await first.stop();
    // The key is in the TPM at the handle (tpm2-tools, an independent reader), not on disk.
    const { stdout } = await run('tpm2_getcap', ['handles-persistent'], { env: sim.env });
    expect(stdout.toLowerCase()).toContain(`0x${HANDLE.toString(16)}`);
    expect(stdout.toLowerCase()).toContain(`0x${KEY_HANDLE.toString(16)}`);
    expect((await readdir(join(dir, 'data'))).filter((f) => f.startsWith('ak-') || f.startsWith('agent-key-'))).toEqual([]);

    const second = await start();
    try {
      const node2 = await server.store.getNode(SpiffeId.parse(second.agentId));
      expect(second.agentId).toBe(first.agentId);
      expect(node2?.akName).toBeDefined();
      expect(node2?.akName).toBe(node1?.akName);
      // The new SVID certifies the same TPM-resident key.
      expect(new X509Certificate(second.identity.chain[0]!).publicKey.equals(key1)).toBe(true);
      // It renews with it, too.
      await second.renewAgentSvidNow();
      expect(server.audit.events.some((e) => e.event === 'node.renewed')).toBe(true);
    } finally {
      await second.stop();
    }
  }, 90_000);
});
