/**
 * `keel demo`: the whole story on one machine, with nothing but what it starts
 * itself: a simulated TPM (swtpm, with its own manufacturer CA) and HSM
 * (SoftHSM), a keel server on the embedded SQLite store, a keel agent that
 * attests the simulated node, and workloads that get their identities from the
 * SPIFFE Workload API — then it stops everything it started. With --hold it
 * keeps the server and agent running for any SPIFFE client.
 */
import { derToPem as pem } from '../spiffe/der.js';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../simulator/ports.js';
import { createSoftHsmToken } from '../../simulator/softhsm.js';
import { startSwtpm } from '../../simulator/swtpm.js';
import { startAgent } from '../agent/agent.js';
import { repoRoot } from '../proto/index.js';
import { agentConfigSchema, parseConfigText, serverConfigSchema } from '../config/index.js';
import { createLogger } from '../log/index.js';
import { startServer } from '../server/server.js';
import { parseSelector } from '../server/store/index.js';
import { bundleFromX509Der, parseDerCertificates, SpiffeId, verifyX509Svid } from '../spiffe/index.js';
import { parseFlags, type Command } from './command.js';
import { untilSignal } from './server-run.js';
import { WorkloadApiClient, type X509SvidMessage, type X509SvidResponse } from './agent/workload-client.js';

const TD = 'example.org';

function say(n: number, title: string, lines: string[] = []): void {
  console.log(`\n[${n}] ${title}`);
  for (const l of lines) console.log(`    ${l}`);
}


function tlsOf(svid: X509SvidMessage) {
  const chain = parseDerCertificates(svid.x509_svid, 16);
  return {
    cert: chain.map((c) => pem(c.raw)).join(''),
    key: createPrivateKey({ key: svid.x509_svid_key, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) as string,
    ca: parseDerCertificates(svid.bundle, 64).map((c) => pem(c.raw)),
  };
}

/** The peer's SPIFFE ID, verified against the bundle by the SPIFFE rules, not by host name. */
function peerId(sock: TLSSocket, bundleDer: Buffer): string {
  const chain = [];
  let c = sock.getPeerCertificate(true);
  const seen = new Set<string>();
  while (c && c.raw && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    chain.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
  }
  return verifyX509Svid(chain.slice(0, 1), bundleFromX509Der(TD, bundleDer)).id.toString();
}

async function mtlsHandshake(server: X509SvidMessage, client: X509SvidMessage): Promise<{ seenByServer: string; seenByClient: string }> {
  const s = tlsOf(server);
  const c = tlsOf(client);
  let seenByServer = '';
  const srv = createServer({ ...s, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (sock) => {
    seenByServer = peerId(sock, server.bundle);
    sock.end('hello from ' + server.spiffe_id);
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  try {
    const seenByClient = await new Promise<string>((resolveId, reject) => {
      const sock = connect({ host: '127.0.0.1', port, ...c, checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' }, () => {
        try {
          resolveId(peerId(sock, client.bundle));
        } catch (e) {
          reject(e);
        }
      });
      sock.on('data', () => sock.end());
      sock.on('error', reject);
    });
    await new Promise((r) => setTimeout(r, 50));
    return { seenByServer, seenByClient };
  } finally {
    srv.close();
  }
}

function nextX509(stream: ReturnType<WorkloadApiClient['watchX509Svids']>, timeoutMs: number): Promise<X509SvidResponse> {
  return new Promise((resolveMsg, reject) => {
    const t = setTimeout(() => {
      stream.off('data', onData);
      reject(new Error(`no X.509-SVID update within ${timeoutMs} ms`));
    }, timeoutMs);
    const onData = (m: X509SvidResponse): void => {
      clearTimeout(t);
      stream.off('data', onData);
      resolveMsg(m);
    };
    stream.on('data', onData);
  });
}


/** Opens FetchX509SVID until a response satisfies `ok`, retrying on errors (e.g. PermissionDenied before the first sync). */
async function openUntilServed(
  client: WorkloadApiClient,
  ok: (m: X509SvidResponse) => boolean,
  timeoutMs: number,
): Promise<{ stream: ReturnType<WorkloadApiClient['watchX509Svids']>; first: X509SvidResponse }> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const stream = client.watchX509Svids();
    const outcome = await new Promise<X509SvidResponse | Error>((res) => {
      const onData = (m: X509SvidResponse): void => {
        if (ok(m)) {
          stream.off('data', onData);
          stream.off('error', onError);
          stream.on('error', () => undefined);
          res(m);
        }
      };
      const onError = (e: Error): void => res(e);
      stream.on('data', onData);
      stream.once('error', onError);
      setTimeout(() => res(new Error('timeout')), Math.max(1, deadline - Date.now()));
    });
    if (!(outcome instanceof Error)) return { stream, first: outcome };
    last = outcome.message;
    stream.cancel();
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`the Workload API served no identity within ${timeoutMs} ms (last: ${last})`);
}

const serialOf = (svid: X509SvidMessage): string => parseDerCertificates(svid.x509_svid, 16)[0]!.serialNumber;

export async function runDemo(opts: { hold: boolean; keep: boolean }): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'keel-demo-'));
  const logFile = createWriteStream(join(dir, 'keel.log'));
  const logger = createLogger({ level: 'info', write: (l) => logFile.write(l + '\n') });
  const cleanup: (() => Promise<void>)[] = [];
  const stopAll = async (): Promise<void> => {
    for (const f of cleanup.reverse()) await f().catch(() => undefined);
    logFile.end();
    if (!opts.keep) await rm(dir, { recursive: true, force: true });
  };
  try {
    const [sim, token] = await Promise.all([startSwtpm(), createSoftHsmToken({ label: 'keel-demo' })]);
    cleanup.push(() => sim.stop(), () => token.destroy());
    // SoftHSM reads its configuration when the module is initialised, in this process.
    process.env.SOFTHSM2_CONF = token.conf;
    process.env.KEEL_DEMO_HSM_PIN = token.pin;
    await writeFile(join(dir, 'manufacturer-ca.pem'), sim.manufacturerCaPems.join(''));
    say(1, 'Simulated hardware started', [
      `TPM: swtpm at ${sim.tcti}, EKs certified by its own manufacturer CA`,
      `HSM: SoftHSM token "${token.label}" (${token.module})`,
      `work dir: ${dir}  (logs: keel.log)`,
    ]);

    const [nodePort, httpPort] = [await freePort(), await freePort()];
    const serverCfg = parseConfigText(
      `server:
  trust_domain: ${TD}
  data_dir: data/server
  listen:
    node_api: 127.0.0.1:${nodePort}
    http: 127.0.0.1:${httpPort}
    http_plaintext: true
    admin_socket: admin/admin.sock
  hsm: { module: ${token.module}, token_label: ${token.label}, pin_source: "env:KEEL_DEMO_HSM_PIN" }
  ca: { ttl: 24h }
  svid: { default_x509_ttl: 1h, default_jwt_ttl: 5m, agent_ttl: 1h }
  attestation:
    manufacturer_cas: [manufacturer-ca.pem]
    firmware_policies: [${join(repoRoot(), 'firmware-policies/swtpm-dev.yaml')}]
`,
      serverConfigSchema,
      { file: 'demo server config', baseDir: dir },
    ).server;
    const server = await startServer(serverCfg, logger.child({ process: 'server' }));
    cleanup.push(() => server.close());
    const caPem = server.ca.bundle().x509Authorities.map((c) => c.toString()).join('');
    await writeFile(join(dir, 'bundle.pem'), caPem);
    const caCert = new X509Certificate(caPem);
    say(2, 'keel server running', [
      `trust domain ${TD}; CA key generated inside the HSM, never exported`,
      `CA: ${caCert.subject.replace(/\n/g, ', ')}, valid until ${caCert.validTo}`,
      `Node API 127.0.0.1:${nodePort} (gRPC/TLS), HTTP 127.0.0.1:${httpPort}, admin socket ${serverCfg.listen.admin_socket}`,
    ]);

    const socketPath = join(dir, 'agent', 'public', 'api.sock');
    const agentCfg = parseConfigText(
      `agent:
  trust_domain: ${TD}
  server: { address: 127.0.0.1:${nodePort}, bundle: bundle.pem }
  data_dir: data/agent
  tpm: { tcti: "${sim.tcti}", ek_kind: rsa-2048, ak_kind: ecc-p256, event_log: /nonexistent/keel-demo-no-event-log }
  workload_api: { socket_path: ${socketPath} }
`,
      agentConfigSchema,
      { file: 'demo agent config', baseDir: dir },
    ).agent;

    // Entries first, so the agent finds them at its first sync: two workloads of this user.
    const uid = process.getuid?.() ?? 0;
    const agentStarted = startAgent({ config: agentCfg, logger: logger.child({ process: 'agent' }) });
    const agent = await agentStarted;
    cleanup.push(() => agent.stop());
    const node = await server.store.getNode(SpiffeId.parse(agent.agentId));
    say(3, 'keel agent attested its node with the TPM', [
      `EK admitted by its certificate chain; AK bound by credential activation; quote verified against policy swtpm-dev`,
      `agent SPIFFE ID: ${agent.agentId}`,
      `node selectors: ${(node?.selectors ?? []).map((s) => (typeof s === 'string' ? s : `${s.type}:${s.value}`)).join(' ')}`,
    ]);

    const parent = SpiffeId.parse(agent.agentId);
    const sel = [parseSelector(`unix:uid:${uid}`)];
    await server.store.createEntry({ spiffeId: SpiffeId.parse(`spiffe://${TD}/demo/web`), parentId: parent, selectors: sel, x509SvidTtl: 20, hint: 'web' });
    await server.store.createEntry({ spiffeId: SpiffeId.parse(`spiffe://${TD}/demo/db`), parentId: parent, selectors: sel, hint: 'db' });
    say(4, 'Registered two workloads for this user', [
      `spiffe://${TD}/demo/web  selector unix:uid:${uid} (${userInfo().username}), X.509 TTL 20 s to show rotation`,
      `spiffe://${TD}/demo/db   selector unix:uid:${uid}`,
    ]);

    const client = new WorkloadApiClient(`unix://${socketPath}`);
    cleanup.push(async () => client.close());
    // Until the agent has synced the new entries, the Workload API answers
    // PermissionDenied ("no identity issued") and ends the stream: SPIFFE
    // clients retry with backoff, and so does this one.
    const opened = await openUntilServed(client, (m) => m.svids.length >= 2, 30_000);
    const stream = opened.stream;
    cleanup.push(async () => stream.cancel());
    const first = opened.first;
    const web = first.svids.find((s) => s.hint === 'web')!;
    const db = first.svids.find((s) => s.hint === 'db')!;
    const webCert = parseDerCertificates(web.x509_svid, 16)[0]!;
    verifyX509Svid(parseDerCertificates(web.x509_svid, 16), bundleFromX509Der(TD, web.bundle));
    const jwt = await client.fetchJwtSvids(['demo-audience'], db.spiffe_id, 10_000);
    const jwtToken = jwt.svids[0]!.svid;
    const validated = await client.validateJwtSvid('demo-audience', jwtToken, 10_000);
    say(5, 'A workload fetched its identities from the SPIFFE Workload API', [
      `socket ${socketPath}; the caller was identified by the kernel (SO_PEERCRED), not by anything it sent`,
      `X.509-SVID ${web.spiffe_id}: serial ${webCert.serialNumber.slice(0, 16)}…, expires ${webCert.validTo}, verified against the bundle`,
      `JWT-SVID for ${db.spiffe_id}, audience demo-audience: ${jwtToken.slice(0, 40)}…`,
      `ValidateJWTSVID → ${validated.spiffe_id}`,
    ]);

    const seen = await mtlsHandshake(web, db);
    say(6, 'Two workloads opened a mutual-TLS connection with their SVIDs', [
      `web (server side) saw its peer as ${seen.seenByServer}`,
      `db  (client side) saw its peer as ${seen.seenByClient}`,
    ]);

    const before = serialOf(web);
    let rotated: X509SvidMessage | undefined;
    const deadline = Date.now() + 30_000;
    while (!rotated && Date.now() < deadline) {
      const m = await nextX509(stream, Math.max(1, deadline - Date.now()));
      const w = m.svids.find((s) => s.hint === 'web');
      if (w && serialOf(w) !== before) rotated = w;
    }
    if (!rotated) throw new Error('the web SVID did not rotate within 30 s');
    say(7, 'Rotation: the agent renewed the web SVID at half-life and pushed it on the open stream', [
      `serial ${before.slice(0, 16)}… → ${serialOf(rotated).slice(0, 16)}…, new key, same SPIFFE ID`,
    ]);

    if (opts.hold) {
      console.log(`\nServer and agent keep running. Point any SPIFFE client at the Workload API:\n`);
      console.log(`    export SPIFFE_ENDPOINT_SOCKET=unix://${socketPath}\n`);
      console.log(`Admin CLI: KEEL_ADMIN_SOCKET=${serverCfg.listen.admin_socket} keel entry list`);
      console.log('Press Ctrl-C to stop everything.');
      await untilSignal(() => process.exit(1));
    }
  } finally {
    await stopAll();
  }
}

export const demo: Command = {
  usage: '[--hold] [--keep]',
  description:
    'Runs keel end to end on a simulated TPM and HSM: server, agent, node attestation, workload SVIDs, mTLS, rotation.\n' +
    '--hold keeps the server and agent running and prints the Workload API socket; --keep leaves the work dir.',
  async run(argv) {
    const { values } = parseFlags(argv, { hold: { type: 'boolean', default: false }, keep: { type: 'boolean', default: false } });
    await runDemo({ hold: values.hold!, keep: values.keep! });
    console.log('\nDemo finished: everything it started has been stopped.');
    return 0;
  },
};
