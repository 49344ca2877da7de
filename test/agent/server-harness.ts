/**
 * A real keel server for the agent's integration test: SoftHSM token → CA,
 * SQLite store, Attestor with the swtpm-dev policy, and the Node API on a
 * real TCP port with TLS. It can be stopped and started again on the same
 * port with the same CA and store, as a server restart would.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { Hsm } from '../../src/hsm/index.js';
import { memoryAuditLog } from '../../src/log/index.js';
import { loadPolicy } from '../../src/policy/index.js';
import { Attestor, firmwarePolicies } from '../../src/server/attestation/index.js';
import { CertificateAuthority, MemoryCaJournal, type CertificateAuthorityOptions } from '../../src/server/ca/index.js';
import { NodeApiServer } from '../../src/server/node-api/index.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';

export const TD = 'example.org';
const SWTPM_DEV_POLICY = new URL('../../firmware-policies/swtpm-dev.yaml', import.meta.url).pathname;

export interface ServerOptions {
  readonly manufacturerCaPems: readonly string[];
  readonly agentSvidTtlSeconds: number;
  /** The CA's lifetimes and schedule (default: a 1-day CA, 1-hour SVIDs, rotation only when called). */
  readonly ca?: Pick<CertificateAuthorityOptions, 'x509' | 'jwt' | 'schedule' | 'backdateSeconds' | 'rotationCheckIntervalMs' | 'minPublishSeconds'>;
}

export class TestServer {
  api: NodeApiServer | undefined;
  port = 0;
  private constructor(
    readonly audit: ReturnType<typeof memoryAuditLog>,
    readonly dir: string,
    readonly token: SoftHsmToken,
    readonly hsm: Hsm,
    public ca: CertificateAuthority,
    readonly store: SqliteDatastore,
    public attestor: Attestor,
    private readonly options: ServerOptions,
    private readonly journal: MemoryCaJournal,
  ) {}

  private static openCa(hsm: Hsm, journal: MemoryCaJournal, o: ServerOptions): Promise<CertificateAuthority> {
    return CertificateAuthority.open({
      trustDomain: TD,
      keys: hsm,
      journal,
      keyLabelPrefix: `agent-it-${process.pid}`,
      rotationCheckIntervalMs: 0,
      x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
      jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
      ...o.ca,
    });
  }

  private static attestorFor(ca: CertificateAuthority, store: SqliteDatastore, audit: ReturnType<typeof memoryAuditLog>, o: ServerOptions): Attestor {
    return new Attestor({
      trustDomain: TrustDomain.parse(TD),
      store,
      ca,
      ekAdmission: { manufacturerCas: o.manufacturerCaPems.map((p) => new X509Certificate(p)), allowList: new Set() },
      policy: firmwarePolicies([loadPolicy(SWTPM_DEV_POLICY)]),
      pcrSelection: { bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] },
      nonceTtlSeconds: 60,
      agentSvidTtlSeconds: o.agentSvidTtlSeconds,
      maxEventLogBytes: 1 << 20,
      audit,
    });
  }

  /**
   * The whole server down, as a process exit would take it: the Node API and
   * the CA (no rotation runs meanwhile). restart() brings both back on the
   * same port, HSM token, journal and store.
   */
  async down(): Promise<void> {
    await this.stop();
    await this.ca.close();
  }

  async restart(): Promise<void> {
    this.ca = await TestServer.openCa(this.hsm, this.journal, this.options);
    this.attestor = TestServer.attestorFor(this.ca, this.store, this.audit, this.options);
    await this.start();
  }

  static async create(o: ServerOptions): Promise<TestServer> {
    const dir = await mkdtemp(join(tmpdir(), 'keel-agent-it-'));
    const token = await createSoftHsmToken({ label: 'keel-agent-it' });
    process.env.SOFTHSM2_CONF = token.conf;
    const pinEnv = `KEEL_AGENT_IT_PIN_${process.pid}`;
    process.env[pinEnv] = token.pin;
    const hsm = await Hsm.open({ module: token.module, token: { label: 'keel-agent-it' }, pin: { env: pinEnv }, sessions: 4 });
    const journal = new MemoryCaJournal();
    const ca = await TestServer.openCa(hsm, journal, o);
    const store = SqliteDatastore.open({ path: join(dir, 'keel.db') });
    const audit = memoryAuditLog();
    const attestor = TestServer.attestorFor(ca, store, audit, o);
    return new TestServer(audit, dir, token, hsm, ca, store, attestor, o, journal);
  }

  /** PEM of the CA certificates: the agent's bootstrap trust. */
  get caPem(): string {
    return this.ca.bundle().x509Authorities.map((c) => c.toString()).join('');
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Starts the Node API (on the port it had before, if any). */
  async start(): Promise<void> {
    this.api = await NodeApiServer.start(this.apiOptions(`127.0.0.1:${this.port}`));
    this.port = this.api.port;
  }

  /**
   * A second Node API on its own port over the same CA, store and attestor:
   * what another server process on the same database (and HSM key) serves.
   */
  async startReplica(): Promise<NodeApiServer> {
    return NodeApiServer.start(this.apiOptions('127.0.0.1:0'));
  }

  private apiOptions(address: string): Parameters<typeof NodeApiServer.start>[0] {
    return {
      address,
      attestor: this.attestor,
      ca: this.ca,
      store: this.store,
      audit: this.audit,
      serverSvidTtlSeconds: 600,
      defaultX509SvidTtlSeconds: 300,
      defaultJwtSvidTtlSeconds: 120,
      maxEventLogBytes: 1 << 20,
      stepTimeoutMs: 20_000,
      syncDebounceMs: 50,
    };
  }

  async stop(): Promise<void> {
    await this.api?.close();
    this.api = undefined;
  }

  async close(): Promise<void> {
    await this.stop();
    await this.ca.close();
    await this.store.close();
    await this.hsm.close();
    await this.token.destroy();
    await rm(this.dir, { recursive: true, force: true });
  }
}
