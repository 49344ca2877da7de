/**
 * An agent whose clock is off the server's (issue 15), with a real clock
 * skew: the agent runs as a child process under libfaketime (Debian's
 * `faketime` package), the server, swtpm and SoftHSM on the real clock.
 * The server here backdates by only 10 s (the CA default), so what the agent
 * accepts 90 s behind is its own `clock_skew_tolerance`. Beyond the
 * tolerance the agent does not exit: it retries, saying why.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect as tlsConnect, type DetailedPeerCertificate } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { ServerCertificateError, verifyServerChain } from '../../src/agent/attestation/index.js';
import { agentConfigSchema, ConfigError, parseConfigText } from '../../src/config/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { parseDerCertificates } from '../../src/spiffe/index.js';
import { header, StreamReader, workloadClient, type X509SvidResponse } from '../workload/client.js';
import { writeAgentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

const LIBFAKETIME = '/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1';
const MAIN = join(resolve(import.meta.dirname, '../..'), 'src/cli/main.ts');
const td = TrustDomain.parse(TD);

let sim: Swtpm;
let server: TestServer;
let dir: string;

beforeAll(async () => {
  sim = await startSwtpm();
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 600 });
  await server.start();
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  await server.store.createEntry({ spiffeId: td.child('/web'), parentId: group.spiffeId, selectors: [parseSelector(`unix:uid:${process.getuid!()}`)], x509SvidTtl: 600 });
  dir = await mkdtemp(join(tmpdir(), 'keel-agent-skew-'));
  await writeFile(join(dir, 'bootstrap.pem'), server.caPem);
}, 60_000);

afterAll(async () => {
  await server?.close();
  await sim?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface SkewedAgent {
  child: ChildProcess;
  socket: string;
  lines: () => { level: string; msg: string; reason?: string }[];
  stop: () => Promise<number | null>;
}

async function startSkewedAgent(name: string, skew: string, tolerance: string): Promise<SkewedAgent> {
  const socket = join(dir, name, 'public', 'api.sock');
  const configFile = await writeAgentConfig(dir, {
    serverAddress: server.address,
    tcti: sim.tcti,
    file: `${name}.yaml`,
    dataDir: `${name}/data`,
    socketPath: socket,
    agent: ['log_level: info', `clock_skew_tolerance: ${tolerance}`, 'attestation_interval: 0'],
  });
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, 'agent', 'run', '--config', configFile], {
    env: { ...process.env, LD_PRELOAD: LIBFAKETIME, FAKETIME: skew, FAKETIME_DONT_FAKE_MONOTONIC: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    socket,
    lines: () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { level: string; msg: string; reason?: string }),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

async function poll(cond: () => boolean | Promise<boolean>, what: string, agent: SkewedAgent, tries = 400): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return;
    if (agent.child.exitCode !== null) throw new Error(`the agent exited (${agent.child.exitCode}) before ${what}:\n${JSON.stringify(agent.lines(), null, 1)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`never saw ${what}:\n${JSON.stringify(agent.lines(), null, 1)}`);
}

describe('agent.clock_skew_tolerance', () => {
  const parse = (extra: string) =>
    parseConfigText(`agent:\n  trust_domain: ${TD}\n  server: { address: "127.0.0.1:8081", bundle: b.pem }\n  data_dir: /var/lib/keel-agent\n${extra}`, agentConfigSchema, { file: 'agent.yaml', baseDir: '/etc/keel' }).agent;
  it('defaults to 60 s and takes a duration', () => {
    expect(parse('').clock_skew_tolerance).toBe(60);
    expect(parse('  clock_skew_tolerance: 2m\n').clock_skew_tolerance).toBe(120);
  });
  it('refuses more than an hour and a non-duration, naming the key', () => {
    for (const bad of ['2h', 'soon']) {
      const e = (() => {
        try {
          parse(`  clock_skew_tolerance: ${bad}\n`);
        } catch (x) {
          return x;
        }
      })();
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).issues.map((i) => i.path).join()).toMatch(/agent\.clock_skew_tolerance/);
    }
  });
});

describe('libfaketime works here', () => {
  it('shifts the clock of a child process', async () => {
    expect(existsSync(LIBFAKETIME)).toBe(true);
    const child = spawn(process.execPath, ['-e', 'process.stdout.write(String(Date.now()))'], { env: { ...process.env, LD_PRELOAD: LIBFAKETIME, FAKETIME: '-90s' } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    await new Promise((r) => child.once('exit', r));
    expect(Date.now() - Number(out)).toBeGreaterThan(80_000);
  });
});

describe('an agent 90 s behind the server', () => {
  it('with clock_skew_tolerance 120s: attests (server TLS certificate and agent SVID "not yet valid" at its clock) and opens the Workload API', async () => {
    const a = await startSkewedAgent('behind-ok', '-90s', '120s');
    try {
      await poll(() => a.lines().some((l) => l.msg === 'agent running'), 'the agent running', a);
      expect(a.lines().filter((l) => l.msg === 'node attested')).toHaveLength(1);
      expect(a.lines().some((l) => l.msg.includes('retrying attestation'))).toBe(false);
      expect(existsSync(a.socket)).toBe(true);
      // The workload's X.509-SVID is "not yet valid" at the agent's clock too: served, within the tolerance.
      const client = workloadClient(a.socket);
      try {
        const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
        const m = await r.next(20_000);
        r.cancel();
        expect(m.svids.map((x) => x.spiffe_id)).toEqual([`spiffe://${TD}/web`]);
        const leaf = parseDerCertificates(m.svids[0]!.x509_svid)[0]!;
        // Issued on the server's clock, 90 s ahead of the agent's: not yet valid where it was checked.
        expect(Date.parse(leaf.validFrom)).toBeGreaterThan(Date.now() - 90_000);
        expect(a.lines().some((l) => /X\.509-SVID.*(refused|not yet valid)/i.test(l.msg))).toBe(false);
      } finally {
        client.close();
      }
    } finally {
      expect(await a.stop()).toBe(0);
    }
  });

  it('with clock_skew_tolerance 30s: does not exit; retries with backoff, naming the clock as the cause', async () => {
    const a = await startSkewedAgent('behind-short', '-90s', '30s');
    try {
      const clockLines = () => a.lines().filter((l) => l.msg.startsWith("the server's certificate is not valid at this node's clock"));
      await poll(() => clockLines().length >= 3, 'three retries', a);
      for (const l of clockLines()) {
        expect(l.level).toBe('error');
        expect(l.reason).toBe('server-certificate-clock');
        expect(l.msg).toMatch(/raise agent\.clock_skew_tolerance, retrying attestation in/);
      }
      expect(a.child.exitCode).toBe(null);
      expect(existsSync(a.socket)).toBe(false);
    } finally {
      expect(await a.stop()).toBe(0);
    }
  });
});

describe("verifyServerChain: the agent's own check of the server's certificate", () => {
  let chain: Buffer[];
  beforeAll(async () => {
    const [host, port] = server.address.split(':');
    chain = await new Promise<Buffer[]>((resolveChain, reject) => {
      const t = tlsConnect({ host, port: Number(port), rejectUnauthorized: false, servername: 'keel-server', ALPNProtocols: ['h2'], minVersion: 'TLSv1.3' }, () => {
        const out: Buffer[] = [];
        let c: DetailedPeerCertificate | undefined = t.getPeerCertificate(true);
        while (c?.raw && !out.some((r) => r.equals(c!.raw))) {
          out.push(c.raw);
          c = c.issuerCertificate;
        }
        t.destroy();
        resolveChain(out);
      });
      t.once('error', reject);
    });
  });
  const serverId = `spiffe://${TD}/keel/server`;
  const err = (f: () => void): ServerCertificateError => {
    try {
      f();
    } catch (e) {
      if (e instanceof ServerCertificateError) return e;
      throw e;
    }
    throw new Error('accepted');
  };

  it('accepts inside the tolerance on both sides of the validity period, refuses beyond it as a clock problem', () => {
    const leaf = new X509Certificate(chain[0]!);
    const notBefore = new Date(leaf.validFrom).getTime();
    const notAfter = new Date(leaf.validTo).getTime();
    const at = (ms: number, tol: number) => () => verifyServerChain(chain, server.caPem, serverId, { now: new Date(ms), clockToleranceMs: tol });
    expect(at(notBefore - 50_000, 60_000)).not.toThrow();
    expect(at(notAfter + 50_000, 60_000)).not.toThrow();
    expect(err(at(notBefore - 70_000, 60_000))).toMatchObject({ reason: 'clock', svidReason: 'not-yet-valid' });
    expect(err(at(notAfter + 70_000, 60_000))).toMatchObject({ reason: 'clock', svidReason: 'expired' });
    expect(err(at(notBefore - 1_000, 0))).toMatchObject({ reason: 'clock' });
  });

  it('refuses a chain to a CA it does not trust as untrusted, and another SPIFFE ID as identity', () => {
    // Any CA but the server's: swtpm's local manufacturer CA.
    expect(err(() => verifyServerChain(chain, sim.manufacturerCaPems.join(''), serverId)).reason).toBe('untrusted');
    expect(err(() => verifyServerChain(chain, server.caPem, `spiffe://${TD}/keel/not-the-server`)).reason).toBe('identity');
  });
});
