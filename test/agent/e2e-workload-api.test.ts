/**
 * The Workload API end to end, with the real server and the real agent:
 * swtpm through the native addon, a SoftHSM-backed CA, SQLite, the Node API
 * over TCP + TLS, startAgent, and grpc-js clients on the agent's Unix socket
 * (one of them a separate process under another uid). What
 * test/workload/*.test.ts checks against a fake identity source is checked
 * here against what the server actually issued: bundles, the security header,
 * refusal of an unregistered uid, bundle changes pushed to open streams, and
 * two workloads authenticating each other over mTLS with their SVIDs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey, createPublicKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import * as tls from 'node:tls';
import { pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { otherUidRuntime } from '../helpers/other-uid.js';

// Copied to a world-readable place when the checkout is not (see test/helpers/other-uid.ts).
const runtime = otherUidRuntime();
afterAll(() => runtime.dispose());
import type { AgentConfig } from '../../src/config/index.js';
import { createLogger } from '../../src/log/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { bundleFromX509Der, bundleToJwksJson, bundleX509Der, jwtBundleJson, parseDerCertificates, TrustBundle, verifyX509Svid, witAuthoritiesFromJson, witAuthoritiesOf, witBundleJson } from '../../src/spiffe/index.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { issueLeaf, makeCa } from '../workload/certs.js';
import { header, StreamReader, unary, workloadClient, type BundlesResponse, type WorkloadClient, type X509SvidResponse } from '../workload/client.js';
import { jwcryptoVerifyWit, type WitBundlesResponse, type WitSvidResponse } from '../workload/jwcrypto.js';
import { agentConfig } from './agent-config.js';
import { TD, TestServer } from './server-harness.js';

const td = TrustDomain.parse(TD);
const OWN = `spiffe://${TD}`;
const PARTNER = TrustDomain.parse('partner.example');
const UID = process.getuid!();
const NOBODY = 65534;
const NODE = realpathSync(process.execPath);

let sim: Swtpm;
let server: TestServer;
let dir: string;
let config: AgentConfig;
let agent: RunningAgent | undefined;
let client: WorkloadClient;
let groupId: SpiffeId;
/** Every line the agent logged. */
const logLines: Record<string, unknown>[] = [];

/** Polls until `cond` holds, or fails naming what it waited for. */
async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Reads the stream until a message satisfies `cond` (intermediate messages are allowed: jitter, coalescing). */
async function nextMatching<T>(r: StreamReader<T>, cond: (m: T) => boolean, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const left = end - Date.now();
    if (left <= 0) throw new Error(`no message with ${what} within ${ms} ms`);
    const m = await r.next(left).catch((e: Error) => {
      throw new Error(`waiting for ${what}: ${e.message}`);
    });
    if (cond(m)) return m;
  }
}

/** The server CA's X.509 authorities as the agent should serve them (concatenated DER). */
const serverBundleDer = (): Buffer => bundleX509Der(server.ca.bundle());
const derList = (der: Buffer): string[] => parseDerCertificates(der).map((c) => c.raw.toString('base64'));
const pemOf = (der: Buffer): string => new X509Certificate(der).toString();

function grpcError(e: unknown): grpc.ServiceError {
  expect(e).toHaveProperty('code');
  return e as grpc.ServiceError;
}

beforeAll(async () => {
  sim = await startSwtpm();
  server = await TestServer.create({ manufacturerCaPems: sim.manufacturerCaPems, agentSvidTtlSeconds: 3600 });
  await server.start();
  // A node group for every swtpm node; this uid holds two identities under it, one of which federates.
  const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:platform:swtpm')] });
  groupId = group.spiffeId;
  await server.store.createEntry({ spiffeId: td.child('/stable'), parentId: groupId, selectors: [parseSelector(`unix:uid:${UID}`)], x509SvidTtl: 600 });
  await server.store.createEntry({
    spiffeId: td.child('/federating'),
    parentId: groupId,
    selectors: [parseSelector(`unix:uid:${UID}`)],
    x509SvidTtl: 600,
    federatesWith: [PARTNER],
  });

  dir = await mkdtemp(join(tmpdir(), 'keel-e2e-wl-'));
  // Other uids must reach the socket: the directory above public/ is traversable (public/ is made 0755 by the agent).
  chmodSync(dir, 0o755);
  ({ config } = await agentConfig(dir, { serverAddress: server.address, tcti: sim.tcti, bootstrapPem: server.caPem, agent: ['log_level: warn'] }));
  agent = await startAgent({
    config,
    // The agent's own audit path (no `audit` override): the lines are checked below.
    logger: createLogger({ level: 'info', write: (line) => void logLines.push(JSON.parse(line) as Record<string, unknown>) }),
    tuning: { backoff: { initialMs: 200, maxMs: 2000 }, keepaliveMs: 5000 },
  });
  client = workloadClient(config.workload_api.socket_path);
}, 90_000);

afterAll(async () => {
  client?.close();
  await agent?.stop();
  await server?.close();
  await sim?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('FetchX509Bundles over the real agent', () => {
  it("answers at once with the trust domain's bundle, keyed spiffe://<td>, equal to the server CA's authorities", async () => {
    const r = new StreamReader<BundlesResponse & { crl: Buffer[] }>(client.FetchX509Bundles({}, header()));
    try {
      // No server-side change happens here: the first message is the one sent on open.
      const first = await r.next(5000);
      expect(Object.keys(first.bundles)).toEqual([OWN]);
      const served = first.bundles[OWN]!;
      expect(derList(served)).toEqual(server.ca.bundle().x509Authorities.map((c) => c.raw.toString('base64')));
      expect(derList(served).length).toBeGreaterThan(0);
      for (const c of parseDerCertificates(served)) expect(c.ca).toBe(true);
      expect(first.crl).toEqual([]);
      // Nothing changed, so nothing more is sent (identical messages are suppressed).
      expect(r.buffered).toBe(0);
    } finally {
      r.cancel();
    }
  });
});

describe('the security header, end to end', () => {
  const bad: [string, grpc.Metadata][] = [
    ['absent', header(null)],
    ['"false"', header('false')],
    ['two values', header(['true', 'true'])],
    ['"true" and "false"', header(['true', 'false'])],
  ];

  it('a call with the header as "true" is served (the control for the refusals below)', async () => {
    const jwt = await unary<{ svids: unknown[] }>(client, 'FetchJWTSVID', { audience: ['db'], spiffe_id: `${OWN}/stable` });
    expect(jwt.svids).toHaveLength(1);
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    try {
      expect((await r.next()).svids.length).toBe(2);
    } finally {
      r.cancel();
    }
  });

  for (const [what, md] of bad) {
    it(`header ${what}: INVALID_ARGUMENT on unary FetchJWTSVID and on the FetchX509SVID stream`, async () => {
      const u = grpcError(await unary(client, 'FetchJWTSVID', { audience: ['db'], spiffe_id: `${OWN}/stable` }, md).catch((e: unknown) => e));
      expect(u.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(u.details).toBe('security header missing from request');
      const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, md));
      const s = grpcError(await r.next().catch((e: unknown) => e));
      expect(s.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(s.details).toBe('security header missing from request');
      expect(r.buffered).toBe(0); // nothing was sent before the refusal
    });
  }
});

/** A grpc-js workload running as another uid: plain ESM loading grpc-js by absolute path, answering commands on stdin, one JSON line each. */
const OTHER_UID_CLIENT = (modUrl: (p: string) => string): string => `
const grpc = await import(${JSON.stringify(modUrl('@grpc/grpc-js/build/src/index.js'))});
const pl = await import(${JSON.stringify(modUrl('@grpc/proto-loader/build/src/index.js'))});
const { createInterface } = await import('node:readline');
const [socketPath, protoPath] = process.argv.slice(2);
const pkg = grpc.loadPackageDefinition(pl.loadSync(protoPath, { keepCase: true, defaults: true }));
const client = new pkg.SpiffeWorkloadAPI('unix://' + socketPath, grpc.credentials.createInsecure());
const md = () => { const m = new grpc.Metadata(); m.set('workload.spiffe.io', 'true'); return m; };
const reply = (o) => process.stdout.write(JSON.stringify({ pid: process.pid, uid: process.getuid(), ...o }) + '\\n');
const fail = (e) => reply({ ok: false, code: e.code, details: e.details });
const b64 = (b) => Buffer.from(b).toString('base64');
const rl = createInterface({ input: process.stdin });
rl.on('line', (cmd) => {
  if (cmd === 'x509') {
    const call = client.FetchX509SVID({}, md());
    let done = false;
    call.on('data', (m) => {
      if (done) return;
      done = true;
      reply({ ok: true, svids: m.svids.map((s) => ({ id: s.spiffe_id, chain: b64(s.x509_svid), key: b64(s.x509_svid_key), bundle: b64(s.bundle) })), federated: Object.keys(m.federated_bundles) });
      call.cancel();
    });
    call.on('error', (e) => { if (!done) { done = true; fail(e); } });
  } else if (cmd === 'jwt') {
    client.FetchJWTSVID({ audience: ['e2e'] }, md(), (e, r) => (e ? fail(e) : reply({ ok: true, svids: r.svids.map((s) => ({ id: s.spiffe_id, token: s.svid })) })));
  }
});
rl.on('close', () => client.close());
`;

interface OtherUidReply {
  pid: number;
  uid: number;
  ok: boolean;
  code?: number;
  details?: string;
  svids?: { id: string; chain?: string; key?: string; bundle?: string; token?: string }[];
  federated?: string[];
}

/** One long-lived client process under `uid`; `ask` sends a command and resolves with its answer. */
class OtherUidWorkload {
  readonly #child: ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiting: ((l: string) => void)[] = [];
  #stderr = '';

  constructor(script: string, uid: number) {
    this.#child = spawn(NODE, [script, config.workload_api.socket_path, runtime.proto('workload.proto')], { uid, gid: uid, stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stderr!.on('data', (d: Buffer) => (this.#stderr += d.toString()));
    createInterface({ input: this.#child.stdout! }).on('line', (l) => {
      const w = this.#waiting.shift();
      if (w) w(l);
      else this.#lines.push(l);
    });
  }

  get pid(): number {
    return this.#child.pid!;
  }

  ask(cmd: 'x509' | 'jwt', ms = 10_000): Promise<OtherUidReply> {
    this.#child.stdin!.write(`${cmd}\n`);
    const ready = this.#lines.shift();
    if (ready !== undefined) return Promise.resolve(JSON.parse(ready) as OtherUidReply);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no answer to ${cmd} within ${ms} ms; stderr: ${this.#stderr.slice(-2000)}`)), ms);
      this.#waiting.push((l) => {
        clearTimeout(t);
        resolve(JSON.parse(l) as OtherUidReply);
      });
    });
  }

  stop(): void {
    this.#child.stdin!.end();
    if (this.#child.exitCode === null) this.#child.kill('SIGKILL');
  }
}

describe('a process under an unregistered uid', () => {
  const scripts = mkdtempSync(join(tmpdir(), 'keel-e2e-wl-scripts-'));
  let other: OtherUidWorkload | undefined;
  afterAll(() => {
    other?.stop();
    rmSync(scripts, { recursive: true, force: true });
  });

  it('gets PermissionDenied "no identity issued"; once an entry for its uid is registered, the same process gets that SVID', async () => {
    chmodSync(scripts, 0o755);
    const script = join(scripts, 'client.mjs');
    writeFileSync(script, OTHER_UID_CLIENT((p) => runtime.moduleUrl(p)), { mode: 0o644 });
    other = new OtherUidWorkload(script, NOBODY);

    const x509Refused = await other.ask('x509');
    const jwtRefused = await other.ask('jwt');
    expect(x509Refused).toMatchObject({ uid: NOBODY, ok: false, code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' });
    expect(jwtRefused).toMatchObject({ uid: NOBODY, ok: false, code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' });
    // Each refusal is an audit line of the agent's log (audit: true), not a plain warning.
    const refusals = logLines.filter((l) => l.event === 'workload.refused' && l.uid === NOBODY);
    expect(refusals.map((l) => l.rpc).sort()).toEqual(expect.arrayContaining(['FetchJWTSVID', 'FetchX509SVID']));
    for (const l of refusals) {
      expect(l).toMatchObject({ audit: true, level: 'warn', msg: 'workload.refused', code: 'PERMISSION_DENIED', pid: x509Refused.pid, gid: NOBODY });
      expect(l.selectors).toEqual(expect.arrayContaining([`unix:uid:${NOBODY}`]));
    }
    expect(logLines.some((l) => l.event === 'workload.issued' && l.audit === true && l.uid === UID)).toBe(true);
    // root, at the same time, holds its identities: the refusal is about the caller, not the agent.
    const mine = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    expect((await mine.next()).svids.map((s) => s.spiffe_id).sort()).toEqual([`${OWN}/federating`, `${OWN}/stable`]);
    mine.cancel();

    // The client sends nothing about who it is: the agent can only learn uid 65534 from the kernel (SO_PEERCRED).
    const entry = await server.store.createEntry({ spiffeId: td.child('/nobody'), parentId: groupId, selectors: [parseSelector(`unix:uid:${NOBODY}`)], x509SvidTtl: 600 });
    let granted: OtherUidReply | undefined;
    await until(
      async () => {
        const r = await other!.ask('x509');
        if (r.ok) granted = r;
        // PermissionDenied until the entry reaches the agent, then Unavailable while its SVID is signed.
        else expect([grpc.status.PERMISSION_DENIED, grpc.status.UNAVAILABLE]).toContain(r.code);
        return r.ok;
      },
      15_000,
      'the uid-65534 SVID',
    );
    expect(granted!.pid).toBe(x509Refused.pid);
    expect(granted!.uid).toBe(NOBODY);
    expect(granted!.svids!.map((s) => s.id)).toEqual([`${OWN}/nobody`]);
    expect(granted!.federated).toEqual([]);
    const svid = granted!.svids![0]!;
    const chain = parseDerCertificates(Buffer.from(svid.chain!, 'base64'));
    // Verified against the server CA's own bundle, not the one the agent sent alongside.
    expect(verifyX509Svid(chain, server.ca.bundle()).id.toString()).toBe(`${OWN}/nobody`);
    const key = createPrivateKey({ key: Buffer.from(svid.key!, 'base64'), format: 'der', type: 'pkcs8' });
    expect(chain[0]!.publicKey.equals(createPublicKey(key))).toBe(true);
    expect(server.audit.events.some((e) => JSON.stringify(e).includes(entry.id) && JSON.stringify(e).includes('svid.x509_issued'))).toBe(true);

    const jwt = await other.ask('jwt');
    expect(jwt).toMatchObject({ pid: x509Refused.pid, uid: NOBODY, ok: true });
    expect(jwt.svids!.map((s) => s.id)).toEqual([`${OWN}/nobody`]);
    // Verified with jose against the JWT authorities read from the server's CA (jose takes no `use: jwt-svid`).
    const jwks = JSON.parse(jwtBundleJson(server.ca.bundle())) as { keys: Record<string, unknown>[] };
    const verified = await jwtVerify(jwt.svids![0]!.token!, createLocalJWKSet({ keys: jwks.keys.map(({ use: _u, ...k }) => k) } as never), { audience: 'e2e' });
    expect(verified.payload.sub).toBe(`${OWN}/nobody`);

    // And root does not pick up uid 65534's identity.
    const again = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    expect((await again.next()).svids.map((s) => s.spiffe_id)).not.toContain(`${OWN}/nobody`);
    again.cancel();
  }, 40_000);
});

describe('bundle changes pushed to open streams', () => {
  it('a federated bundle set on the server reaches the open FetchX509Bundles, FetchJWTBundles and FetchX509SVID streams; a CA key rotation too', async () => {
    const x509Svid = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    const x509Bundles = new StreamReader<BundlesResponse>(client.FetchX509Bundles({}, header()));
    const jwtBundles = new StreamReader<BundlesResponse>(client.FetchJWTBundles({}, header()));
    try {
      const [s0, b0, j0] = await Promise.all([x509Svid.next(), x509Bundles.next(), jwtBundles.next()]);
      // Before: the federating entry names a trust domain whose bundle the server does not have.
      expect(s0.federated_bundles).toEqual({});
      expect(Object.keys(b0.bundles)).toEqual([OWN]);
      expect(Object.keys(j0.bundles)).toEqual([OWN]);

      // partner.example's CA and JWT key, made by openssl and node, not by keel.
      const partnerCa = makeCa(PARTNER.name);
      const partnerJwtKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
      const partner = TrustBundle.create({ trustDomain: PARTNER, x509Authorities: [new X509Certificate(partnerCa.certDer)], jwtAuthorities: [['partner-1', partnerJwtKey]] });
      await server.store.setFederatedBundle(PARTNER, bundleToJwksJson(partner), 300);

      const partnerKey = PARTNER.idString;
      const s1 = await nextMatching(x509Svid, (m) => partnerKey in m.federated_bundles, 10_000, 'the federated bundle in X509SVIDResponse');
      const b1 = await nextMatching(x509Bundles, (m) => partnerKey in m.bundles, 10_000, 'the federated bundle in X509BundlesResponse');
      const j1 = await nextMatching(jwtBundles, (m) => partnerKey in m.bundles, 10_000, 'the federated bundle in JWTBundlesResponse');
      // Complete messages, not deltas: every SVID is there again, with its key and the own bundle.
      expect(s1.svids.map((s) => s.spiffe_id).sort()).toEqual([`${OWN}/federating`, `${OWN}/stable`]);
      for (const s of s1.svids) {
        expect(verifyX509Svid(parseDerCertificates(s.x509_svid), server.ca.bundle()).id.toString()).toBe(s.spiffe_id);
        expect(s.x509_svid_key.length).toBeGreaterThan(0);
        expect(s.bundle.equals(serverBundleDer())).toBe(true);
      }
      expect(Object.keys(s1.federated_bundles)).toEqual([partnerKey]);
      expect(s1.federated_bundles[partnerKey]!.equals(partnerCa.certDer)).toBe(true);
      expect(Object.keys(b1.bundles).sort()).toEqual([OWN, partnerKey].sort());
      expect(b1.bundles[OWN]!.equals(serverBundleDer())).toBe(true);
      expect(b1.bundles[partnerKey]!.equals(partnerCa.certDer)).toBe(true);
      expect(Object.keys(j1.bundles).sort()).toEqual([OWN, partnerKey].sort());
      const partnerJwks = JSON.parse(j1.bundles[partnerKey]!.toString()) as { keys: { kid?: string; use?: string }[] };
      expect(partnerJwks.keys.map((k) => [k.kid, k.use])).toEqual([['partner-1', 'jwt-svid']]);
      const ownJwks = JSON.parse(j1.bundles[OWN]!.toString()) as { keys: { kid?: string }[] };
      expect(ownJwks.keys.map((k) => k.kid).sort()).toEqual(server.ca.bundle().jwtKeyIds.sort());

      // A CA rotation step: the next X.509 CA and JWT key are prepared and published (half of the
      // active key's 24 h life remaining, as the time passed to rotate() says; nothing is activated).
      const before = server.ca.bundle();
      await server.ca.rotate(Date.now() + 12 * 3600_000 + 60_000);
      const after = server.ca.bundle();
      expect(after.x509Authorities.length).toBe(before.x509Authorities.length + 1);
      expect(after.jwtKeyIds.length).toBe(before.jwtKeyIds.length + 1);
      const newCa = derList(bundleX509Der(after)).filter((c) => !derList(bundleX509Der(before)).includes(c));
      expect(newCa).toHaveLength(1);

      const hasNewCa = (der: Buffer | undefined): boolean => der !== undefined && derList(der).includes(newCa[0]!);
      const s2 = await nextMatching(x509Svid, (m) => m.svids.every((s) => hasNewCa(s.bundle)), 10_000, 'the rotated CA in every X509SVID.bundle');
      const b2 = await nextMatching(x509Bundles, (m) => hasNewCa(m.bundles[OWN]), 10_000, 'the rotated CA in X509BundlesResponse');
      const j2 = await nextMatching(
        jwtBundles,
        (m) => (JSON.parse(m.bundles[OWN]?.toString() ?? '{"keys":[]}') as { keys: unknown[] }).keys.length === after.jwtKeyIds.length,
        10_000,
        'the prepared JWT key in JWTBundlesResponse',
      );
      expect(s2.svids.map((s) => s.spiffe_id).sort()).toEqual([`${OWN}/federating`, `${OWN}/stable`]);
      for (const s of s2.svids) {
        expect(derList(s.bundle)).toEqual(derList(bundleX509Der(after)));
        // Still signed by the active CA, which stays in the bundle.
        expect(verifyX509Svid(parseDerCertificates(s.x509_svid), bundleFromX509Der(TD, s.bundle)).id.toString()).toBe(s.spiffe_id);
      }
      expect(s2.federated_bundles[partnerKey]!.equals(partnerCa.certDer)).toBe(true);
      expect(derList(b2.bundles[OWN]!)).toEqual(derList(bundleX509Der(after)));
      expect(b2.bundles[partnerKey]!.equals(partnerCa.certDer)).toBe(true);
      const ownJwks2 = JSON.parse(j2.bundles[OWN]!.toString()) as { keys: { kid?: string }[] };
      expect(ownJwks2.keys.map((k) => k.kid).sort()).toEqual(after.jwtKeyIds.sort());
      expect(Object.keys(j2.bundles).sort()).toEqual([OWN, partnerKey].sort());
    } finally {
      x509Svid.cancel();
      x509Bundles.cancel();
      jwtBundles.cancel();
    }
  }, 45_000);
});

describe('mTLS between two workloads with the SVIDs the agent served', () => {
  /** Checks a peer's certificate as a SPIFFE verifier does: the X.509-SVID rules against the bundle, then the ID. */
  const authorize = (raw: Buffer | undefined, bundle: TrustBundle, expected: string): Error | undefined => {
    if (!raw) return new Error('the peer sent no certificate');
    try {
      const id = verifyX509Svid([new X509Certificate(raw)], bundle).id.toString();
      return id === expected ? undefined : new Error(`peer is ${id}, expected ${expected}`);
    } catch (e) {
      return e as Error;
    }
  };

  it('each side verifies the other\'s SPIFFE ID with verifyX509Svid; a wrong ID or a foreign CA is refused', async () => {
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    let response: X509SvidResponse;
    try {
      response = await r.next();
    } finally {
      r.cancel();
    }
    const byId = new Map(response.svids.map((s) => [s.spiffe_id, s]));
    const serverSvid = byId.get(`${OWN}/stable`)!;
    const clientSvid = byId.get(`${OWN}/federating`)!;
    const bundle = bundleFromX509Der(TD, serverSvid.bundle);
    const caPem = parseDerCertificates(serverSvid.bundle).map((c) => c.toString()).join('');
    const credsOf = (s: typeof serverSvid) => ({
      cert: parseDerCertificates(s.x509_svid).map((c) => c.toString()).join(''),
      key: createPrivateKey({ key: s.x509_svid_key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string,
    });

    const seenByServer: string[] = [];
    // The server judges client certificates itself (verifyX509Svid: chain to the bundle, SVID rules, then
    // the ID); OpenSSL's own verdict against the same CA file is recorded next to it as a cross-check.
    const srv = tls.createServer({ ...credsOf(serverSvid), ca: caPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.3' }, (sock) => {
      const openssl = sock.authorized ? 'ok' : String(sock.authorizationError);
      const refusal = authorize(sock.getPeerCertificate().raw, bundle, clientSvid.spiffe_id);
      if (refusal) {
        seenByServer.push(`refused (openssl: ${openssl}): ${refusal.message}`);
        sock.destroy();
        return;
      }
      seenByServer.push(`accepted (openssl: ${openssl})`);
      sock.end(`hello ${clientSvid.spiffe_id}`);
    });
    srv.on('tlsClientError', (e) => seenByServer.push(`tls: ${e.message}`));
    await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
    const port = (srv.address() as { port: number }).port;

    const connect = (creds: { cert: string; key: string }, expectServer: string): Promise<string> =>
      new Promise((resolve, reject) => {
        let data = '';
        const sock = tls.connect({
          host: '127.0.0.1',
          port,
          ...creds,
          ca: caPem,
          minVersion: 'TLSv1.3',
          // SVIDs carry a SPIFFE ID, not a host name: the ID is what is checked.
          checkServerIdentity: (_host, cert) => authorize(cert.raw, bundle, expectServer),
        });
        sock.on('data', (d: Buffer) => (data += d.toString()));
        sock.on('end', () => resolve(data));
        sock.on('error', reject);
        sock.on('close', () => resolve(data));
      });

    try {
      expect(await connect(credsOf(clientSvid), serverSvid.spiffe_id)).toBe(`hello ${clientSvid.spiffe_id}`);
      expect(seenByServer).toEqual(['accepted (openssl: ok)']);

      // The client expects another server identity: it refuses the handshake.
      const wrongServer = await connect(credsOf(clientSvid), `${OWN}/someone-else`).catch((e: Error) => e);
      expect(wrongServer).toBeInstanceOf(Error);
      expect((wrongServer as Error).message).toContain(`peer is ${serverSvid.spiffe_id}, expected ${OWN}/someone-else`);
      // The server sees the client walk out of the handshake, and never serves it.
      await until(() => seenByServer.length > 1, 5000, 'the server to see the aborted handshake');
      expect(seenByServer.slice(1)).toEqual([expect.stringMatching(/^tls: /)]);

      // A valid SVID of the trust domain but the wrong workload: the server's authorization refuses it.
      seenByServer.length = 0;
      expect(await connect(credsOf(serverSvid), serverSvid.spiffe_id).catch(() => '')).toBe('');
      await until(() => seenByServer.length > 0, 5000, 'the server to judge the client');
      expect(seenByServer).toEqual([`refused (openssl: ok): peer is ${serverSvid.spiffe_id}, expected ${clientSvid.spiffe_id}`]);

      // An SVID with the expected ID from another CA of the same name: not in the bundle, refused by both.
      seenByServer.length = 0;
      const foreignCa = makeCa(TD);
      const forged = issueLeaf(foreignCa, clientSvid.spiffe_id);
      const forgedCreds = {
        cert: pemOf(forged.chainDer[0]!),
        key: createPrivateKey({ key: forged.privateKeyPkcs8, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string,
      };
      expect(await connect(forgedCreds, serverSvid.spiffe_id).catch(() => '')).toBe('');
      await until(() => seenByServer.length > 0, 5000, 'the server to judge the forged client');
      expect(seenByServer).toEqual([expect.stringMatching(/^refused \(openssl: (?!ok)[A-Z_]+\): X509-SVID refused \(no-issuer\)/)]);
    } finally {
      await new Promise<void>((res) => srv.close(() => res()));
    }
  });
});

describe('make-before-break on an open FetchX509SVID stream', () => {
  it("an entry's DNS names, then its TTL updated on the server: every message carries its SVID; the serial changes once per update, to an SVID that certifies it", async () => {
    const stable = (await server.store.listEntries({ spiffeId: td.child('/stable') })).items[0]!;
    const stableLeaf = (m: X509SvidResponse): X509Certificate | undefined => {
      const s = m.svids.find((x) => x.spiffe_id === `${OWN}/stable`);
      return s ? parseDerCertificates(s.x509_svid)[0] : undefined;
    };
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    const messages: X509SvidResponse[] = [];
    const readUntil = async (cond: (leaf: X509Certificate) => boolean, what: string): Promise<X509Certificate> => {
      const m = await nextMatching(
        r,
        (x) => {
          messages.push(x);
          const leaf = stableLeaf(x);
          return leaf !== undefined && cond(leaf);
        },
        20_000,
        what,
      );
      return stableLeaf(m)!;
    };
    try {
      const m0 = await r.next();
      messages.push(m0);
      const s0 = stableLeaf(m0)!;
      expect(s0.subjectAltName).not.toContain('DNS:');

      await server.store.updateEntry(stable.id, { dnsNames: ['stable.example.org'] });
      const s1 = await readUntil((l) => (l.subjectAltName ?? '').includes('DNS:stable.example.org'), 'the SVID with the new DNS name');
      await server.store.updateEntry(stable.id, { x509SvidTtl: 1800 });
      // The old TTL is 600 s: an SVID valid for more than 1,200 s from now is the new one.
      const s2 = await readUntil((l) => new Date(l.validTo).getTime() - Date.now() > 1_200_000, 'the SVID with the new TTL');
      expect(s2.subjectAltName).toContain('DNS:stable.example.org');

      // No message lacked either SVID while the entry was changing.
      for (const m of messages) expect(m.svids.map((s) => s.spiffe_id).sort()).toEqual([`${OWN}/federating`, `${OWN}/stable`]);
      const runs = messages.map((m) => stableLeaf(m)!.serialNumber).filter((x, i, all) => i === 0 || all[i - 1] !== x);
      expect(runs).toEqual([s0.serialNumber, s1.serialNumber, s2.serialNumber]);
      expect(verifyX509Svid(parseDerCertificates(Buffer.concat([s2.raw])), server.ca.bundle()).id.toString()).toBe(`${OWN}/stable`);
    } finally {
      r.cancel();
    }
  }, 60_000);
});

describe('WIT-SVIDs through the real agent and server', () => {
  it("FetchWITSVID serves a token per identity, signed by the server's CA through the Node API, that python3-jwcrypto verifies against the FetchWITBundles bundle and the server's own JWT keys; the cnf key is the one handed out", async () => {
    const wits = new StreamReader<WitSvidResponse>(client.FetchWITSVID({}, header()));
    const bundles = new StreamReader<WitBundlesResponse>(client.FetchWITBundles({}, header()));
    try {
      const [res, b] = await Promise.all([wits.next(20_000), bundles.next(20_000)]);
      expect(res.svids.map((s) => s.spiffe_id).sort()).toEqual([`${OWN}/federating`, `${OWN}/stable`]);
      // The bundle the agent serves is the server CA's JWT keys under their WIT key IDs, nothing else.
      const served = witAuthoritiesFromJson(b.bundles[OWN]!);
      const own = witAuthoritiesOf(server.ca.bundle().jwtAuthorities);
      expect([...served.keys()].sort()).toEqual([...own.keys()].sort());
      for (const [kid, key] of own) expect(served.get(kid)!.equals(key)).toBe(true);

      // The independent check: jwcrypto with the bundle built from the server's keys, not the agent's copy.
      const results = await jwcryptoVerifyWit(witBundleJson(own), res.svids);
      for (const r of results) {
        expect(r).toMatchObject({ verified: true, typ: 'wit+jwt', alg: 'ES256', sub: r.spiffe_id, exp_in_future: true, key_is_private: true, pop_verified: true });
        expect(own.has(r.kid!)).toBe(true);
      }
      // Each identity its own key pair, and the server audited each issuance for this agent's entries.
      expect(new Set(res.svids.map((s) => JSON.parse(s.wit_svid_key).x)).size).toBe(res.svids.length);
      for (const s of res.svids) {
        const jti = (JSON.parse(Buffer.from(s.wit_svid.split('.')[1]!, 'base64url').toString()) as { jti: string }).jti;
        expect(server.audit.events.some((e) => (e as { event?: string; jti?: string }).event === 'svid.wit_issued' && (e as { jti?: string }).jti === jti)).toBe(true);
      }
    } finally {
      wits.cancel();
      bundles.cancel();
    }
  }, 40_000);
});

// Last: it stops and restarts the server.
describe('a server outage under a burst of FetchJWTSVID for audiences not cached', () => {
  it('answers are only OK or UNAVAILABLE (or the caller\'s own deadline), never PermissionDenied, and after the restart every one succeeds', async () => {
    let n = 0;
    const codes: number[] = [];
    const burst = async (size: number): Promise<number[]> => {
      const got = await Promise.all(
        Array.from({ length: size }, () =>
          unary(client, 'FetchJWTSVID', { audience: [`outage-${n++}`] }, header(), { deadline: Date.now() + 3000 }).then(
            () => grpc.status.OK,
            (e: grpc.ServiceError) => e.code,
          ),
        ),
      );
      codes.push(...got);
      return got;
    };
    expect(await burst(5)).toEqual(Array(5).fill(grpc.status.OK));

    const mark = logLines.length;
    await server.stop();
    await until(
      () => logLines.slice(mark).some((l) => typeof l.msg === 'string' && l.msg.startsWith('server unreachable, retrying in')),
      15_000,
      'the agent to see the server gone',
    );
    const during = [...(await burst(40)), ...(await burst(40))];
    expect(during).toContain(grpc.status.UNAVAILABLE);
    // The cached X.509-SVIDs are still served meanwhile.
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    expect((await r.next()).svids.map((s) => s.spiffe_id).sort()).toEqual([`${OWN}/federating`, `${OWN}/stable`]);
    r.cancel();

    await server.start();
    // Bursts keep coming through the restart and the agent's reconnection, until one is answered in full.
    await until(async () => (await burst(40)).every((c) => c === grpc.status.OK), 45_000, 'a burst answered in full after the restart');
    // And the agent is in sync again (its entries stream reopened), not only minting.
    await until(() => logLines.slice(mark).some((l) => l.msg === 'reconnected to the server'), 30_000, 'the agent to re-sync');
    const names = [...new Set(codes.map((c) => grpc.status[c]))].sort();
    // The agent answers 200 ms before the caller's deadline; on a loaded machine the answer can still
    // arrive after it, which the client reports as its own DEADLINE_EXCEEDED (retryable, like UNAVAILABLE).
    expect(names.filter((c) => c !== 'OK' && c !== 'UNAVAILABLE' && c !== 'DEADLINE_EXCEEDED')).toEqual([]);
    expect(codes.filter((c) => c === grpc.status.PERMISSION_DENIED)).toHaveLength(0);
    const refusals = logLines.slice(mark).filter((l) => l.event === 'workload.refused' && l.uid === UID);
    expect(refusals.every((l) => l.code === 'UNAVAILABLE')).toBe(true);
    expect(await burst(40)).toEqual(Array(40).fill(grpc.status.OK));
  }, 120_000);
});
