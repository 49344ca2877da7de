/**
 * `keel server run` as a real process: SoftHSM token, SQLite in its data dir,
 * the swtpm manufacturer CA as EK trust; an agent attests over the Node API,
 * the admin CLI talks to it over its Unix socket, SIGTERM stops it cleanly,
 * and a restart goes on with the same CA.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { attestNode } from '../../src/agent/attestation/index.js';
import { TpmDevice } from '../../src/tpm/device.js';
import { keel, ROOT, startProcess, waitReady, writeServerConfig } from './server-harness.js';

describe('keel server run', () => {
  let dir: string;
  let token: SoftHsmToken;
  let sim: Swtpm;
  let env: NodeJS.ProcessEnv;
  let config: string;
  let nodePort: number;
  let httpPort: number;
  let socket: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keel-server-'));
    [token, sim] = await Promise.all([createSoftHsmToken({ label: 'keel' }), startSwtpm()]);
    await writeFile(join(dir, 'manufacturer.pem'), sim.manufacturerCaPems.join(''));
    ({ config, env, nodePort, httpPort, socket } = await writeServerConfig(
      dir,
      token,
      `  log_level: info
  svid:
    default_x509_ttl: 1h
    agent_ttl: 1h
  attestation:
    manufacturer_cas: [manufacturer.pem]
    firmware_policies: [${join(ROOT, 'firmware-policies/swtpm-dev.yaml')}]
`,
    ));
  });
  afterAll(async () => {
    await sim?.stop();
    await token?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  const cli = async (...args: string[]) => (await keel(args, env)).stdout;

  it('serves, attests a node, answers the admin CLI, stops on SIGTERM, and restarts with the same CA', async () => {
    const server = startProcess(['server', 'run', '--config', config], env);
    let caPem: string;
    try {
      await waitReady(`http://127.0.0.1:${httpPort}/ready`, server);
      expect((await stat(socket)).mode & 0o777).toBe(0o600);
      // The PIN never reaches the logs.
      expect(server.logs()).not.toContain(token.pin);

      caPem = await cli('bundle', 'show');
      const ca = new X509Certificate(caPem);
      expect(ca.ca).toBe(true);
      // server.clock_skew_tolerance (default 60 s) backdates the CA (made moments ago): agents a minute behind accept it.
      expect(new Date(ca.validFrom).getTime()).toBeLessThanOrEqual(Date.now() - 59_000);

      const dev = await TpmDevice.open(sim.tcti);
      try {
        const agentKey = await dev.loadAgentKey('rsa-2048', await dev.createAgentKey('rsa-2048'));
        const svid = await attestNode({
          device: dev, ekKind: 'rsa-2048', agentKey,
          serverAddress: `127.0.0.1:${nodePort}`, serverCaBundle: caPem, trustDomain: 'example.org',
        });
        expect(svid.spiffeId).toMatch(/^spiffe:\/\/example\.org\/keel\/agent\/tpm\/[0-9a-f]{64}$/);
        expect(new X509Certificate(svid.svidChain[0]!).verify(ca.publicKey)).toBe(true);

        const agents = JSON.parse(await cli('agent', 'list', '--json'));
        const list = Array.isArray(agents) ? agents : agents.agents ?? agents.items;
        expect(list.map((a: { spiffeId?: string; agentId?: string }) => a.spiffeId ?? a.agentId)).toContain(svid.spiffeId);
      } finally {
        await dev.close();
      }

      const entry = JSON.parse(
        await cli('entry', 'create', '--spiffe-id', 'spiffe://example.org/web', '--parent-id', 'spiffe://example.org/keel/agent/tpm/' + 'a'.repeat(64), '--selector', 'unix:uid:1000', '--json'),
      );
      expect(JSON.stringify(entry)).toContain('spiffe://example.org/web');
      // Audit: the attestation and the admin change are each one structured line.
      const lines = server.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
      expect(lines.some((l) => l.audit && l.event === 'node.attested')).toBe(true);
      expect(lines.some((l) => l.audit && l.event === 'admin.change')).toBe(true);

      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      expect(metrics).toMatch(/keel_node_attestations_total\{result="ok"\} 1/);
    } finally {
      server.child.kill('SIGTERM');
    }
    expect(await server.exited).toBe(0);
    expect(server.logs()).toContain('"msg":"stopped"');

    const again = startProcess(['server', 'run', '--config', config], env);
    try {
      await waitReady(`http://127.0.0.1:${httpPort}/ready`, again);
      expect(await cli('bundle', 'show')).toBe(caPem);
    } finally {
      again.child.kill('SIGTERM');
    }
    expect(await again.exited).toBe(0);
  });

  it('refuses to start on a config error, naming the key', async () => {
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, `server:\n  trust_domain: Example.org\n  data_dir: x\n`);
    const r = await keel(['server', 'run', '--config', bad], env).catch((e) => e);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/server\.trust_domain/);
    expect(r.stderr).toMatch(/server\.listen/);
  });
});
