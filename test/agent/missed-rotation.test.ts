/**
 * CA rotations an agent or a server sleeps through (issue 15), with a CA of
 * 30 s and SVIDs of 5 s so a whole rotation fits in a test: the next key is
 * prepared about 5 s after the first, activated about 18 s in, and the first
 * expires at 30 s. Real swtpm, SoftHSM CA, SQLite, TCP + TLS, startAgent.
 *
 * - The agent down across prepare → activate: it comes back knowing only the
 *   first CA, while the server's TLS chain ends in the second. The server
 *   sends the second CA's rollover certificate (signed by the first); the
 *   agent accepts the server through it, says so, fetches the bundle, caches
 *   it, and serves SVIDs of the new CA with nobody touching server.bundle.
 * - The server down across prepare → activate: on restart it holds the new
 *   key back until published (ca.min_publish), agents fetch it meanwhile, and
 *   the workload is served across the activation without a gap.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import type { AgentConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/log/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { parseDerCertificates, verifyX509Svid } from '../../src/spiffe/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { header, StreamReader, workloadClient, type BundlesResponse, type WorkloadClient, type X509SvidResponse } from '../workload/client.js';
import { agentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

const td = TrustDomain.parse(TD);
const UID = process.getuid!();
const CA = {
  x509: { caTtlSeconds: 30, svidMaxTtlSeconds: 5 },
  jwt: { keyTtlSeconds: 30, svidMaxTtlSeconds: 5 },
  schedule: { prepareAt: 0.8, activateAt: 0.4 },
  backdateSeconds: 1,
  rotationCheckIntervalMs: 200,
} as const;

interface LogLine {
  level: string;
  msg: string;
  [k: string]: unknown;
}

let sim: Swtpm | undefined;
let server: TestServer | undefined;
let dir: string | undefined;
let agent: RunningAgent | undefined;
let client: WorkloadClient | undefined;

afterEach(async () => {
  client?.close();
  await agent?.stop();
  await server?.close();
  await sim?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
  client = agent = server = sim = dir = undefined;
});

async function until<T>(f: () => T | undefined | Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function setUp(): Promise<{ config: AgentConfig; logs: LogLine[]; start: () => Promise<RunningAgent> }> {
  sim = await startSwtpm();
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 5, ca: CA });
  await server.start();
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  await server.store.createEntry({ spiffeId: td.child('/web'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${UID}`)], x509SvidTtl: 5 });
  dir = await mkdtemp(join(tmpdir(), 'keel-missed-rotation-'));
  const { config } = await agentConfig(dir, { serverAddress: server.address, tcti: sim.tcti, bootstrapPem: server.caPem, agent: ['attestation_interval: 0'] });
  const logs: LogLine[] = [];
  const start = (): Promise<RunningAgent> =>
    startAgent({
      config,
      logger: createLogger({ level: 'info', write: (l) => void logs.push(JSON.parse(l) as LogLine) }),
      audit: () => undefined,
      tuning: { backoff: { initialMs: 100, maxMs: 500 }, keepaliveMs: 2000 },
    });
  return { config, logs, start };
}

const activeIndex = (): number | undefined => server!.ca.status().find((s) => s.kind === 'x509' && s.state === 'active')?.index;

/** The workload's SVID as the agent serves it now, checked against the server CA's own bundle. */
async function servedSvid(c: WorkloadClient): Promise<{ leaf: X509Certificate; bundle: string[] }> {
  const r = new StreamReader<X509SvidResponse>(c.FetchX509SVID({}, header()));
  try {
    const m = await r.next(10_000);
    const s = m.svids.find((x) => x.spiffe_id === `spiffe://${TD}/web`)!;
    const chain = parseDerCertificates(s.x509_svid);
    expect(verifyX509Svid(chain, server!.ca.bundle()).id.toString()).toBe(`spiffe://${TD}/web`);
    return { leaf: chain[0]!, bundle: parseDerCertificates(s.bundle).map((b) => b.fingerprint256) };
  } finally {
    r.cancel();
  }
}

describe('an agent down while the server prepared and activated its next CA', () => {
  it('comes back trusting only the old CA, accepts the server through the rollover certificate, says so, caches the new bundle and serves SVIDs of the new CA', async () => {
    const { config, logs, start } = await setUp();
    agent = await start();
    client = workloadClient(config.workload_api.socket_path);
    const first = await servedSvid(client);
    const k1 = server!.ca.activeCaCertificate()!;
    expect(first.bundle).toEqual([new X509Certificate(k1).fingerprint256]);
    client.close();
    client = undefined;
    await agent.stop();
    agent = undefined;
    // What the agent will come back with: the bootstrap bundle and its cache, both only the first CA.
    const cached = JSON.parse(await readFile(join(config.data_dir, 'bundle.json'), 'utf8')) as { x509_der: string };
    expect(parseDerCertificates(Buffer.from(cached.x509_der, 'base64')).map((c) => c.raw.equals(k1))).toEqual([true]);

    // The rotation, while the agent is away.
    await until(() => (activeIndex() === 2 ? true : undefined), 40_000, 'the second CA key to become active');
    const k2 = server!.ca.activeCaCertificate()!;
    expect(k2.equals(k1)).toBe(false);
    // The server's TLS chain moved to the new CA, with its rollover certificate signed by the old one.
    const rollover = server!.ca.rolloverCertificates().map((d) => new X509Certificate(d));
    expect(rollover).toHaveLength(1);
    expect(rollover[0]!.publicKey.equals(new X509Certificate(k2).publicKey)).toBe(true);
    expect(rollover[0]!.verify(new X509Certificate(k1).publicKey)).toBe(true);

    agent = await Promise.race([
      start(),
      new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`the agent did not start: ${JSON.stringify(logs.slice(-8))}`)), 20_000)),
    ]);
    const endorsed = logs.filter((l) => l.msg.startsWith("the server's CA is new to this agent"));
    expect(endorsed).toHaveLength(1);
    expect(endorsed[0]).toMatchObject({
      level: 'warn',
      authority: new X509Certificate(k2).subject,
      rolloverCertificateFingerprint: rollover[0]!.fingerprint256,
      endorsedByFingerprint: new X509Certificate(k1).fingerprint256,
    });
    expect(logs.some((l) => l.msg.startsWith("the server's certificate chains to no CA this agent trusts"))).toBe(false);

    client = workloadClient(config.workload_api.socket_path);
    const after = await servedSvid(client);
    // Issued by the new CA, with the new CA in the workload's bundle, and nothing the server does not hold or held
    // (the old CA leaves the bundle once its last SVID expired, a few seconds after the activation).
    expect(after.leaf.verify(new X509Certificate(k2).publicKey)).toBe(true);
    expect(after.bundle).toContain(new X509Certificate(k2).fingerprint256);
    const known = new Set([k1, ...server!.ca.bundle().x509Authorities.map((c) => c.raw)].map((d) => new X509Certificate(d).fingerprint256));
    for (const f of after.bundle) expect(known.has(f)).toBe(true);
    // And the cache holds the new CA for the next start.
    await until(
      async () => {
        const doc = JSON.parse(await readFile(join(config.data_dir, 'bundle.json'), 'utf8')) as { x509_der: string };
        return parseDerCertificates(Buffer.from(doc.x509_der, 'base64')).some((c) => c.raw.equals(k2)) ? true : undefined;
      },
      10_000,
      'the new CA in the cached bundle',
    );
  }, 90_000);
});

describe('a server down while its next CA was due to be prepared and activated', () => {
  it('on restart the new key is published before it signs; the agent fetches it and serves the workload through the activation', async () => {
    const { config, start } = await setUp();
    agent = await start();
    client = workloadClient(config.workload_api.socket_path);
    await servedSvid(client);
    const k1 = server!.ca.activeCaCertificate()!;
    await server!.down();
    // Down past the time the next key was due to be prepared (≈5 s) and activated (≈18 s).
    await new Promise((r) => setTimeout(r, 20_000));
    await server!.restart();
    // The old key still signs: the prepared one was never seen by anyone.
    expect(server!.ca.activeCaCertificate()!.equals(k1)).toBe(true);
    await until(() => (activeIndex() === 2 ? true : undefined), 20_000, 'the second CA key to become active');
    const k2 = server!.ca.activeCaCertificate()!;

    // A stream open across the activation ends up with an SVID of the new CA and never lacks one.
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    try {
      const m = await until(
        async () => {
          const msg = await r.next(10_000);
          const s = msg.svids.find((x) => x.spiffe_id === `spiffe://${TD}/web`);
          expect(s, 'every message carries the SVID').toBeDefined();
          return parseDerCertificates(s!.x509_svid)[0]!.verify(new X509Certificate(k2).publicKey) ? msg : undefined;
        },
        20_000,
        'an SVID of the new CA',
      );
      expect(m.svids).toHaveLength(1);
    } finally {
      r.cancel();
    }
    const bundles = new StreamReader<BundlesResponse>(client.FetchX509Bundles({}, header()));
    try {
      const b = await bundles.next(10_000);
      expect(parseDerCertificates(b.bundles[td.idString]!).some((c) => c.raw.equals(k2))).toBe(true);
    } finally {
      bundles.cancel();
    }
  }, 90_000);
});
