/**
 * A whole keel server for attestation tests: SoftHSM token → CA, SQLite store
 * in a temp dir, the Attestor, and the Node API on a real TCP port with TLS.
 * Agents are real swtpms through the native addon.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { Hsm } from '../../src/hsm/index.js';
import { CertificateAuthority, MemoryCaJournal } from '../../src/server/ca/index.js';
import { SqliteDatastore, type AttestedNode } from '../../src/server/store/index.js';
import { Attestor, firmwarePolicies, type MeasurementPolicy } from '../../src/server/attestation/index.js';
import { NodeApiServer } from '../../src/server/node-api/index.js';
import { loadPolicy, type FirmwarePolicy } from '../../src/policy/index.js';
import { memoryAuditLog, type AuditEvent } from '../../src/log/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { TpmDevice, type AgentKeyHandle } from '../../src/tpm/device.js';
import { credentialOf, tpmAgentKey, type AgentCredential, type AgentKey } from '../../src/agent/attestation/index.js';

export const TD = 'example.org';
export const SWTPM_DEV_POLICY = new URL('../../firmware-policies/swtpm-dev.yaml', import.meta.url).pathname;

export function swtpmDevPolicy(): FirmwarePolicy {
  return loadPolicy(SWTPM_DEV_POLICY);
}

/** A clock the tests move forward: the attestor's and the nonce checks' notion of now. */
export class TestClock {
  offsetMs = 0;
  now = (): Date => new Date(Date.now() + this.offsetMs);
}

export interface ServerSetup {
  readonly manufacturerCaPems?: readonly string[];
  readonly allowList?: readonly string[];
  readonly policies?: readonly FirmwarePolicy[];
  readonly policy?: MeasurementPolicy;
  readonly nonceTtlSeconds?: number;
  readonly maxEventLogBytes?: number;
  readonly agentSvidTtlSeconds?: number;
  readonly pcrs?: readonly number[];
  readonly stepTimeoutMs?: number;
  readonly maxChallengesPerPeer?: number;
  readonly maxChallenges?: number;
  readonly pruneIntervalMs?: number;
}

export interface TestServer {
  readonly ca: CertificateAuthority;
  readonly store: SqliteDatastore;
  readonly attestor: Attestor;
  readonly api: NodeApiServer;
  readonly audit: ReturnType<typeof memoryAuditLog>;
  readonly clock: TestClock;
  readonly address: string;
  /** PEM of the CA certificates: the agents' bootstrap trust. */
  readonly caPem: string;
  /** The SQLite file of the store (for counting rows the Datastore does not expose). */
  readonly dbPath: string;
  /** Audit events recorded since the last call. */
  takeAudit(): AuditEvent[];
  nodes(): Promise<readonly AttestedNode[]>;
  close(): Promise<void>;
}

/** One SoftHSM token and HSM session pool per test file (SoftHSM reads its config once per process). */
export class HsmFixture {
  private constructor(
    readonly token: SoftHsmToken,
    readonly hsm: Hsm,
  ) {}
  static async create(): Promise<HsmFixture> {
    const token = await createSoftHsmToken({ label: 'keel-attest' });
    process.env.SOFTHSM2_CONF = token.conf;
    const pinEnv = `KEEL_ATTEST_TEST_PIN_${process.pid}`;
    process.env[pinEnv] = token.pin;
    const hsm = await Hsm.open({ module: token.module, token: { label: 'keel-attest' }, pin: { env: pinEnv }, sessions: 4 });
    return new HsmFixture(token, hsm);
  }
  async close(): Promise<void> {
    await this.hsm.close();
    await this.token.destroy();
  }
}

let caCount = 0;

export async function openCa(hsm: Hsm, trustDomain = TD, now?: () => number): Promise<CertificateAuthority> {
  return CertificateAuthority.open({
    trustDomain,
    keys: hsm,
    journal: new MemoryCaJournal(),
    keyLabelPrefix: `t${process.pid}-${++caCount}`,
    rotationCheckIntervalMs: 0,
    ...(now ? { now } : {}),
    x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
    jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
  });
}

export async function startServer(hsm: Hsm, setup: ServerSetup = {}): Promise<TestServer> {
  const dir = await mkdtemp(join(tmpdir(), 'keel-attest-'));
  const clock = new TestClock();
  const ca = await openCa(hsm);
  const store = SqliteDatastore.open({ path: join(dir, 'keel.db') });
  const audit = memoryAuditLog();
  const maxEventLogBytes = setup.maxEventLogBytes ?? 1 << 20;
  const attestor = new Attestor({
    trustDomain: TrustDomain.parse(TD),
    store,
    ca,
    ekAdmission: {
      manufacturerCas: (setup.manufacturerCaPems ?? []).map((p) => new X509Certificate(p)),
      allowList: new Set(setup.allowList ?? []),
    },
    policy: setup.policy ?? firmwarePolicies(setup.policies ?? [swtpmDevPolicy()]),
    pcrSelection: { bank: 'sha256', pcrs: setup.pcrs ?? [0, 1, 2, 3, 4, 5, 6, 7] },
    nonceTtlSeconds: setup.nonceTtlSeconds ?? 60,
    agentSvidTtlSeconds: setup.agentSvidTtlSeconds ?? 600,
    maxEventLogBytes,
    audit,
    now: clock.now,
  });
  const api = await NodeApiServer.start({
    address: '127.0.0.1:0',
    attestor,
    ca,
    store,
    audit,
    serverSvidTtlSeconds: 600,
    defaultX509SvidTtlSeconds: 300,
    defaultJwtSvidTtlSeconds: 120,
    maxEventLogBytes,
    stepTimeoutMs: setup.stepTimeoutMs ?? 20_000,
    syncDebounceMs: 100,
    ...(setup.maxChallengesPerPeer ? { maxChallengesPerPeer: setup.maxChallengesPerPeer } : {}),
    ...(setup.maxChallenges ? { maxChallenges: setup.maxChallenges } : {}),
    ...(setup.pruneIntervalMs ? { pruneIntervalMs: setup.pruneIntervalMs } : {}),
  });
  let seen = 0;
  return {
    ca,
    store,
    attestor,
    api,
    audit,
    clock,
    address: `127.0.0.1:${api.port}`,
    caPem: ca.bundle().x509Authorities.map((c) => c.toString()).join(''),
    dbPath: join(dir, 'keel.db'),
    takeAudit() {
      const out = audit.events.slice(seen);
      seen = audit.events.length;
      return out;
    },
    async nodes() {
      return (await store.listNodes({}, { limit: 1000 })).items;
    },
    async close() {
      await api.close();
      await ca.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A swtpm and the addon's device on it. */
export interface TestTpm {
  readonly sim: Swtpm;
  readonly device: TpmDevice;
  /** An agent key made in this TPM, persistent at AGENT_KEY_HANDLE. */
  readonly agentKey: AgentKeyHandle;
  /** The same key as a signer (CSR, channel binding). */
  readonly key: AgentKey;
  /** The credential of an agent SVID for this TPM's agent key. */
  credential(chain: readonly Buffer[]): AgentCredential;
  close(): Promise<void>;
}

export const AGENT_KEY_HANDLE = 0x81018100;

export async function startTpm(): Promise<TestTpm> {
  const sim = await startSwtpm();
  try {
    const device = await TpmDevice.open(sim.tcti);
    // Persistent, so it takes none of swtpm's three transient object slots between commands.
    const loaded = await device.loadAgentKey('rsa-2048', await device.createAgentKey('rsa-2048'));
    await device.persistAk(loaded, AGENT_KEY_HANDLE);
    await device.flush(loaded);
    const agentKey = await device.agentKeyFromPersistent(AGENT_KEY_HANDLE);
    const key = tpmAgentKey(device, agentKey);
    return {
      sim,
      device,
      agentKey,
      key,
      credential: (chain) => credentialOf(chain, key),
      async close() {
        await device.close();
        await sim.stop();
      },
    };
  } catch (e) {
    await sim.stop();
    throw e;
  }
}

/** Node records in a comparable form (bigint clocks as strings). */
export function snapshot(nodes: readonly AttestedNode[]): string {
  return JSON.stringify(nodes, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}
