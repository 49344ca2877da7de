/**
 * Node attestation and the Node API, end to end on this machine: swtpm agents
 * through the native addon, the server's Node API over gRPC + TLS on a TCP
 * port, SoftHSM CA, SQLite store. Each figure is set against a limit measured
 * in the same run:
 *   - attestations/s against the TPM work alone (ActivateCredential + Quote +
 *     PCR read on the same swtpm, credential made beforehand): what is left is
 *     keel's (EK chain, MakeCredential, quote checks, policy, CSR, HSM
 *     signature, SQLite writes, TLS, gRPC);
 *   - X.509-SVIDs/s through SignX509Svids against the CA issuing the same
 *     number directly in process (same HSM key, same parsed CSR).
 *
 *   node --import tsx bench/attestation.ts [seconds per sample, default 3]
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const SECONDS = Number(process.argv[2] ?? 3);
const POOL = 8;

// Async C_Sign runs on the libuv pool; size it before anything starts it.
if (!process.env.UV_THREADPOOL_SIZE) {
  const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(POOL) },
  });
  process.exit(r.status ?? 1);
}

const { X509Certificate, generateKeyPairSync, randomBytes } = await import('node:crypto');
const { mkdtemp, rm } = await import('node:fs/promises');
const { tmpdir } = await import('node:os');
const { join } = await import('node:path');
const { createSoftHsmToken } = await import('../simulator/softhsm.js');
const { startSwtpm } = await import('../simulator/swtpm.js');
const { Hsm } = await import('../src/hsm/index.js');
const { CertificateAuthority, MemoryCaJournal, parseCsr } = await import('../src/server/ca/index.js');
const { SqliteDatastore, parseSelector } = await import('../src/server/store/index.js');
const { Attestor, firmwarePolicies } = await import('../src/server/attestation/index.js');
const { NodeApiServer } = await import('../src/server/node-api/index.js');
const { loadPolicy } = await import('../src/policy/index.js');
const { memoryAuditLog } = await import('../src/log/index.js');
const { SpiffeId, TrustDomain } = await import('../src/spiffe/id.js');
const { TpmDevice } = await import('../src/tpm/device.js');
const { makeCredential, objectName, parseTpmtPublic } = await import('../src/tpm/index.js');
const { attestNode, buildCsr, credentialOf, quoteForChallenge, tpmAgentKey, NodeApiClient } = await import('../src/agent/attestation/index.js');

type Device = import('../src/tpm/device.js').TpmDevice;

const TD = 'bench.example';
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** `workers` loops of `op` for SECONDS; rate and latency percentiles (ms). */
async function measure(workers: number, op: (w: number) => Promise<unknown>): Promise<{ rate: number; p50: number; p99: number; n: number }> {
  const lat: number[] = [];
  const end = Date.now() + SECONDS * 1000;
  const start = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      while (Date.now() < end) {
        const t = process.hrtime.bigint();
        await op(w);
        lat.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  lat.sort((a, b) => a - b);
  return { rate: lat.length / secs, p50: percentile(lat, 50), p99: percentile(lat, 99), n: lat.length };
}

// ── server ────────────────────────────────────────────────────────────────
const token = await createSoftHsmToken({ label: 'keel-bench' });
process.env.SOFTHSM2_CONF = token.conf;
process.env.KEEL_BENCH_PIN = token.pin;
const hsm = await Hsm.open({ module: token.module, token: { label: 'keel-bench' }, pin: { env: 'KEEL_BENCH_PIN' }, sessions: POOL });
const dir = await mkdtemp(join(tmpdir(), 'keel-bench-attest-'));
const sims = await Promise.all(Array.from({ length: 4 }, () => startSwtpm()));
const devices: Device[] = await Promise.all(sims.map((s) => TpmDevice.open(s.tcti)));

const ca = await CertificateAuthority.open({
  trustDomain: TD,
  keys: hsm,
  journal: new MemoryCaJournal(),
  rotationCheckIntervalMs: 0,
  x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
  jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
});
const store = SqliteDatastore.open({ path: join(dir, 'keel.db') });
const audit = memoryAuditLog();
const attestor = new Attestor({
  trustDomain: TrustDomain.parse(TD),
  store,
  ca,
  ekAdmission: { manufacturerCas: sims.flatMap((s) => s.manufacturerCaPems.map((p) => new X509Certificate(p))), allowList: new Set() },
  policy: firmwarePolicies([loadPolicy(fileURLToPath(new URL('../firmware-policies/swtpm-dev.yaml', import.meta.url)))]),
  pcrSelection: { bank: 'sha256', pcrs: PCRS },
  nonceTtlSeconds: 60,
  agentSvidTtlSeconds: 3600,
  maxEventLogBytes: 1 << 20,
  audit,
});
const api = await NodeApiServer.start({
  address: '127.0.0.1:0',
  attestor,
  ca,
  store,
  audit,
  serverSvidTtlSeconds: 3600,
  defaultX509SvidTtlSeconds: 3600,
  defaultJwtSvidTtlSeconds: 300,
  maxEventLogBytes: 1 << 20,
});
const caPem = ca.bundle().x509Authorities.map((c) => c.toString()).join('');
const conn = { serverAddress: `127.0.0.1:${api.port}`, serverCaBundle: caPem, trustDomain: TD };

try {
  // Agents keep their AK (as a real agent does on disk): make one per TPM up front.
  const akBlobs = await Promise.all(devices.map((d) => d.createAk('rsa-2048', 'ecc-p256')));
  // And their agent key, persistent (no transient slot held between commands).
  const agentKeys = await Promise.all(
    devices.map(async (d) => {
      const k = await d.loadAgentKey('rsa-2048', await d.createAgentKey('rsa-2048'));
      await d.persistAk(k, 0x81018100);
      await d.flush(k);
      return d.agentKeyFromPersistent(0x81018100);
    }),
  );
  const attest = (w: number) => attestNode({ device: devices[w]!, ekKind: 'rsa-2048', akBlobs: akBlobs[w]!, agentKey: agentKeys[w]!, ...conn });

  // The TPM work alone: a credential for this AK made beforehand, then what the agent asks of the TPM.
  const ekPubs = await Promise.all(devices.map((d) => d.ekPublic('rsa-2048')));
  const handles = await Promise.all(devices.map((d, i) => d.loadAk('rsa-2048', akBlobs[i]!)));
  const tpmOnly = async (w: number): Promise<void> => {
    const secret = randomBytes(32);
    const cred = makeCredential(parseTpmtPublic(ekPubs[w]!), objectName(parseTpmtPublic(akBlobs[w]!.public)), secret);
    await devices[w]!.activateCredential(handles[w]!, 'rsa-2048', cred.credentialBlob, cred.encryptedSecret);
    const nonce = randomBytes(32);
    await quoteForChallenge(devices[w]!, handles[w]!, akBlobs[w]!.public, { credential_blob: Buffer.alloc(0), encrypted_secret: Buffer.alloc(0), nonce, pcr_selection: [{ bank: 'sha256', pcrs: PCRS }] });
    await devices[w]!.certify(agentKeys[w]!, handles[w]!, nonce);
    // The CSR for the agent key, signed in the TPM.
    await devices[w]!.sign(agentKeys[w]!, randomBytes(32));
  };
  await attest(0); // warm-up (TLS, JIT, first journal write)
  const tpm1 = await measure(1, tpmOnly);
  const tpm4 = await measure(4, tpmOnly);
  await Promise.all(devices.map((d, i) => d.flush(handles[i]!)));
  const seq = await measure(1, attest);
  const conc = await measure(4, attest);

  // SVIDs through the Node API: an attested agent with one entry.
  const agent = await attest(0);
  const entry = await store.createEntry({ spiffeId: SpiffeId.parse(`spiffe://${TD}/workload`), parentId: SpiffeId.parse(agent.spiffeId), selectors: [parseSelector('unix:uid:1000')] });
  const client = new NodeApiClient({ ...conn, address: conn.serverAddress, clientSvid: credentialOf(agent.svidChain, tpmAgentKey(devices[0]!, agentKeys[0]!)) });
  const csr = buildCsr(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey);
  const parsed = parseCsr(csr);
  const svidRows: string[] = [];
  for (const batch of [10, 100]) {
    const requests = Array.from({ length: batch }, () => ({ entryId: entry.id, csr }));
    await client.signX509Svids(requests);
    const viaApi = await measure(1, async () => {
      const r = await client.signX509Svids(requests);
      if (r.some((x) => x.error)) throw new Error(`refused: ${r.find((x) => x.error)!.error}`);
    });
    const direct = await measure(1, () => Promise.all(requests.map(() => ca.issueX509Svid({ csr: parsed, spiffeId: entry.spiffeId, ttlSeconds: 3600 }))));
    const apiRate = viaApi.rate * batch;
    const directRate = direct.rate * batch;
    svidRows.push(`| SignX509Svids, batches of ${batch} | ${apiRate.toFixed(0)} SVIDs/s | ${viaApi.p50.toFixed(1)} / ${viaApi.p99.toFixed(1)} ms per call | CA direct: ${directRate.toFixed(0)} SVIDs/s | ${(apiRate / directRate).toFixed(2)} |`);
  }
  client.close();

  console.log('| what | rate | p50 / p99 latency | limit (same run) | ratio |');
  console.log('| --- | --- | --- | --- | --- |');
  console.log(`| attestation, sequential, 1 swtpm | ${seq.rate.toFixed(1)} /s | ${seq.p50.toFixed(1)} / ${seq.p99.toFixed(1)} ms | TPM work alone: ${tpm1.rate.toFixed(1)} /s | ${(seq.rate / tpm1.rate).toFixed(2)} |`);
  console.log(`| attestation, concurrency 4, 4 swtpms | ${conc.rate.toFixed(1)} /s | ${conc.p50.toFixed(1)} / ${conc.p99.toFixed(1)} ms | TPM work alone: ${tpm4.rate.toFixed(1)} /s | ${(conc.rate / tpm4.rate).toFixed(2)} |`);
  for (const r of svidRows) console.log(r);
  console.log(`\n${SECONDS} s per sample; RSA-2048 EK with its swtpm-local-CA certificate, ECDSA P-256 AK kept across attestations, PCRs sha256:0-7, SoftHSM ECDSA P-256 CA key, ${POOL} HSM sessions.`);
} finally {
  await api.close();
  await ca.close();
  await store.close();
  await Promise.all(devices.map((d) => d.close()));
  await Promise.all(sims.map((s) => s.stop()));
  await hsm.close();
  await token.destroy();
  await rm(dir, { recursive: true, force: true });
}
