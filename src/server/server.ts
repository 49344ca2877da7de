/**
 * The keel server process: configuration in, every part started in order
 * (store, HSM, CA, attestation, Node API, HTTP API), and stopped in the
 * reverse order with in-flight calls finished.
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import type { ServerConfig } from '../config/index.js';
import { Hsm, type HsmConfig } from '../hsm/index.js';
import { auditLog, type AuditEvent, type AuditLog, type Logger } from '../log/index.js';
import { loadPolicies } from '../policy/index.js';
import { Attestor, firmwarePolicies } from './attestation/index.js';
import {
  CertificateAuthority, parseJournal, pemToDers, signerFromPrivateKey,
  type CaJournal, type CaJournalState, type UpstreamAuthority,
} from './ca/index.js';
import { createKeelMetrics, startHttpApi, type HttpApiHandle, type KeelMetrics } from './http/index.js';
import { NodeApiServer } from './node-api/index.js';
import { describeConnection, PostgresDatastore, SqliteDatastore, serverIdOf, type Datastore } from './store/index.js';

/** A problem with what the configuration points at (files, keys), found at start-up. */
export class ServerStartError extends Error {
  override readonly name = 'ServerStartError';
  constructor(
    readonly path: string,
    /** What is wrong there, without the path. */
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`${path}: ${reason}`, options);
  }
}

export interface KeelServer {
  readonly ca: CertificateAuthority;
  readonly store: Datastore;
  readonly nodeApiPort: number;
  readonly http: HttpApiHandle;
  readonly metrics: KeelMetrics;
  /** Stops accepting, finishes in-flight calls, releases the HSM and the store. */
  close(): Promise<void>;
}

/** The CA journal kept in the datastore, so that servers sharing a database share nothing else. */
export class StoreCaJournal implements CaJournal {
  constructor(
    private readonly store: Datastore,
    private readonly serverId: string,
  ) {}
  async load(): Promise<CaJournalState | undefined> {
    const text = await this.store.getCaJournal(this.serverId);
    return text === undefined ? undefined : parseJournal(text, `CA journal of ${this.serverId} in the store`);
  }
  async save(state: CaJournalState): Promise<void> {
    await this.store.putCaJournal(this.serverId, JSON.stringify(state));
  }
}

/** Counts what the audit trail records, so the metrics cannot disagree with it. */
function meteredAudit(inner: AuditLog, metrics: KeelMetrics): AuditLog {
  const counters: Partial<Record<AuditEvent['event'], () => void>> = {
    'node.attested': () => metrics.attestations.inc({ result: 'ok' }),
    'node.attestation_refused': () => metrics.attestations.inc({ result: 'refused' }),
    'node.renewed': () => metrics.svidsIssued.inc({ type: 'agent' }),
    'svid.x509_issued': () => metrics.svidsIssued.inc({ type: 'x509' }),
    'svid.jwt_issued': () => metrics.svidsIssued.inc({ type: 'jwt' }),
  };
  return {
    record(e) {
      inner.record(e);
      counters[e.event]?.();
    },
  };
}

/** A file the configuration names; a failure says which key named it. */
async function readConfigured(path: string, key: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (e) {
    throw new ServerStartError(key, `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** The PEM certificates of a configured file, parsed; ServerStartError naming `what` otherwise. */
async function readCertificates(path: string, what: string): Promise<X509Certificate[]> {
  const text = (await readConfigured(path, what)).toString('utf8');
  const ders = pemToDers(text);
  if (ders.length === 0) throw new ServerStartError(what, `${path} holds no PEM certificate`);
  try {
    return ders.map((d) => new X509Certificate(d));
  } catch (e) {
    throw new ServerStartError(what, `${path}: ${(e as Error).message}`, { cause: e });
  }
}

async function upstreamOf(cfg: NonNullable<ServerConfig['ca']['upstream']>, hsm: Hsm): Promise<UpstreamAuthority> {
  const chain = await readCertificates(cfg.cert, 'server.ca.upstream.cert');
  if (cfg.key.kind === 'file') {
    const pem = await readConfigured(cfg.key.path, 'server.ca.upstream.key_file');
    return { chainDer: chain.map((c) => c.raw), signer: signerFromPrivateKey(pem) };
  }
  const key = await hsm.findKey({ label: cfg.key.label });
  if (!key) throw new ServerStartError('server.ca.upstream.hsm_key_label', `no key labelled ${JSON.stringify(cfg.key.label)} in the HSM`);
  return { chainDer: chain.map((c) => c.raw), signer: hsm.signer(key) };
}

/** The HSM connection the server's configuration describes. */
export function hsmConfigOf(config: ServerConfig): HsmConfig {
  return {
    module: config.hsm.module,
    token: config.hsm.token.kind === 'label' ? { label: config.hsm.token.label } : { serial: config.hsm.token.serial },
    pin: config.hsm.pin_source.kind === 'env' ? { env: config.hsm.pin_source.name } : { file: config.hsm.pin_source.path },
    sessions: config.hsm.sessions,
  };
}

export async function startServer(config: ServerConfig, logger: Logger): Promise<KeelServer> {
  const started: { close(): Promise<void> | void }[] = [];
  const stopAll = async (): Promise<void> => {
    for (const part of started.reverse()) {
      try {
        await part.close();
      } catch (e) {
        logger.warn('error while stopping', { err: e });
      }
    }
    started.length = 0;
  };

  try {
    const td = config.trust_domain;
    const metrics = createKeelMetrics();
    const audit = meteredAudit(auditLog(logger.child({ component: 'audit' })), metrics);
    await mkdir(config.data_dir, { recursive: true, mode: 0o700 });

    if (config.attestation.firmware_policies.length === 0) {
      throw new ServerStartError(
        'server.attestation.firmware_policies',
        'no firmware policy is configured, so no node could attest (for development with swtpm: firmware-policies/swtpm-dev.yaml)',
      );
    }
    const policies = loadPolicies(config.attestation.firmware_policies);
    const manufacturerCas = (
      await Promise.all(config.attestation.manufacturer_cas.map((p, i) => readCertificates(p, `server.attestation.manufacturer_cas.${i}`)))
    ).flat();

    const store: Datastore =
      config.store.kind === 'sqlite' ? SqliteDatastore.open({ path: config.store.path }) : await PostgresDatastore.open(config.store.connection);
    started.push(store);
    logger.info('store opened', { store: config.store.kind === 'sqlite' ? `sqlite ${config.store.path}` : describeConnection(config.store.connection) });

    const hsm = await Hsm.open(hsmConfigOf(config));
    started.push(hsm);

    const x509Max = Math.max(config.svid.default_x509_ttl, config.svid.agent_ttl);
    const ca = await CertificateAuthority.open({
      trustDomain: td,
      keys: hsm,
      journal: new StoreCaJournal(store, serverIdOf(td).toString()),
      x509: {
        keyType: config.ca.key_type,
        caTtlSeconds: config.ca.ttl,
        svidMaxTtlSeconds: x509Max,
        ...(config.ca.subject.organization ? { organization: config.ca.subject.organization } : {}),
        ...(config.ca.upstream ? { upstream: await upstreamOf(config.ca.upstream, hsm) } : {}),
      },
      jwt: {
        keyType: config.jwt.key_type,
        keyTtlSeconds: config.jwt.key_ttl ?? config.ca.ttl,
        svidMaxTtlSeconds: config.svid.default_jwt_ttl,
        // The iss of every JWT-SVID, the same string OIDC discovery names.
        ...(config.jwt.issuer ? { issuer: config.jwt.issuer } : {}),
      },
      // Agents up to the tolerance behind must not see not-yet-valid certificates.
      backdateSeconds: config.clock_skew_tolerance,
      ...(config.ca.min_publish !== undefined ? { minPublishSeconds: config.ca.min_publish } : {}),
      onError: (e) => logger.error('CA: rotation or key destruction failed', { err: e }),
      onWarning: (msg, fields) => logger.warn(msg, fields),
    });
    started.push(ca);
    ca.onBundleChange(() => logger.info('trust bundle changed', { sequence: String(ca.bundle().sequence ?? 0) }));

    const attestor = new Attestor({
      trustDomain: td,
      store,
      ca,
      ekAdmission: { manufacturerCas, allowList: new Set(config.attestation.ek_allow_list.map((h) => h.toLowerCase())) },
      policy: firmwarePolicies(policies),
      pcrSelection: { bank: config.attestation.pcr_bank, pcrs: config.attestation.pcrs },
      nonceTtlSeconds: config.attestation.nonce_ttl,
      agentSvidTtlSeconds: config.svid.agent_ttl,
      maxEventLogBytes: config.attestation.max_event_log_size,
      audit,
    });

    const nodeApi = await NodeApiServer.start({
      address: `${config.listen.node_api.host}:${config.listen.node_api.port}`,
      attestor,
      ca,
      store,
      audit,
      logger: logger.child({ component: 'node-api' }),
      serverSvidTtlSeconds: config.svid.default_x509_ttl,
      defaultX509SvidTtlSeconds: config.svid.default_x509_ttl,
      defaultJwtSvidTtlSeconds: config.svid.default_jwt_ttl,
      maxEventLogBytes: config.attestation.max_event_log_size,
      maxChallengesPerPeer: config.attestation.max_challenges_per_peer,
      maxChallenges: config.attestation.max_challenges,
      // An unanswered challenge ends with its nonce.
      stepTimeoutMs: Math.min(60_000, config.attestation.nonce_ttl * 1000),
    });
    started.push(nodeApi);

    const tls = config.listen.http_tls
      ? {
          cert: await readConfigured(config.listen.http_tls.cert, 'server.listen.http_tls.cert'),
          key: await readConfigured(config.listen.http_tls.key, 'server.listen.http_tls.key'),
        }
      : undefined;
    const http = await startHttpApi({
      store,
      bundles: ca,
      trustDomain: td,
      audit,
      logger: logger.child({ component: 'http' }),
      metrics,
      ...(config.jwt.issuer ? { jwtIssuer: config.jwt.issuer } : {}),
      ...(config.jwt.oidc_domains ? { oidcDomains: config.jwt.oidc_domains } : {}),
      adminIds: config.admin_ids,
      caReady: () => ca.ready(),
      hsmReady: () => ca.canSign(),
      caStatus: () => ca.status(),
      listen: {
        public: {
          host: config.listen.http.host,
          port: config.listen.http.port,
          ...(tls ? { tls } : { allowPlaintext: config.listen.http_plaintext }),
        },
        adminSocket: config.listen.admin_socket,
      },
    });
    started.push(http);

    logger.info('keel server started', {
      trustDomain: td.name,
      nodeApi: `${config.listen.node_api.host}:${nodeApi.port}`,
      http: http.publicAddress,
      adminSocket: config.listen.admin_socket,
      policies: policies.map((p) => p.name),
    });
    return {
      ca,
      store,
      nodeApiPort: nodeApi.port,
      http,
      metrics,
      close: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
