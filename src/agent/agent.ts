/**
 * The keel agent process: configuration → TPM → node attestation → entry sync
 * and SVIDs → the SPIFFE Workload API on a Unix socket.
 *
 * State kept in data_dir (0700):
 * - `ak-<ek>-<ak>.json` (0600): the AK's public area and its private area
 *   wrapped by the TPM (useless off this TPM), so the node quotes with the
 *   same AK across restarts.
 * - `bundle.json` (0600): the last trust bundle of the agent's trust domain,
 *   trusted next to the bootstrap bundle for the server's certificate, so a
 *   restart after a CA rotation still reaches the server.
 *
 * - `agent-key-<ek>.json` (0600): the agent key's public area and its private
 *   area wrapped by the TPM (useless off this TPM), unless
 *   `tpm.agent_key_persistent_handle` keeps the key in the TPM itself.
 *
 * The agent SVID certifies the agent key, which the TPM made and never lets
 * out (fixedTPM, fixedParent): every connection to the server is bound to it
 * by a TPM signature, so nothing that could be copied off the machine lets
 * anyone else act as the node. A restarted agent attests again.
 */
import { derToPem } from '../spiffe/der.js';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentConfig } from '../config/index.js';
import { auditLog, type Logger } from '../log/index.js';
import { parseDerCertificates } from '../spiffe/index.js';
import type { TrustDomain } from '../spiffe/id.js';
import { TpmDevice, type AgentKeyHandle, type AkBlobs } from '../tpm/device.js';
import { TpmConnectionError, TpmDeviceError, TpmError, TpmObjectError } from '../tpm/tpm-error.js';
import { X509SvidError } from '../spiffe/index.js';
import { formatHostPort, ServerAddresses } from './server-addresses.js';
import { AgentAttestationError, AgentClockError, attestNode, checkNode, NodeApiError, renewAgentSvid, tpmAgentKey, type AgentKey, type AgentSvid, type ServerCaEndorsement } from './attestation/index.js';
import { AgentSvidRotator, Backoff, formatDelay, SvidManager, type AgentIdentity, type BackoffOptions } from './manager/index.js';
import { NodeSession } from './node-client.js';
import { startWorkloadApiServer, svidKeyGenerator, workloadAuditEvent, type WorkloadApiServer, type WorkloadAuditEvent } from './workload/index.js';
import type { BundleSnapshot } from './workload/identity-source.js';

export const DEFAULT_EVENT_LOG = '/sys/kernel/security/tpm0/binary_bios_measurements';

export type AgentStartFailure = 'bootstrap-bundle' | 'data-dir' | 'aborted';

export class AgentStartError extends Error {
  override readonly name = 'AgentStartError';
  constructor(
    readonly reason: AgentStartFailure,
    detail: string,
  ) {
    super(detail);
  }
}

export interface AgentTuning {
  /** Reconnection delays (default 0.5 s doubling to 30 s). */
  readonly backoff?: BackoffOptions;
  /** How long start-up waits for the first entries and SVIDs before the Workload API opens (default 10 s). */
  readonly readyTimeoutMs?: number;
  /** Keepalive ping interval on the server connection (default 30 s). */
  readonly keepaliveMs?: number;
}

export interface StartAgentOptions {
  readonly config: AgentConfig;
  readonly logger: Logger;
  /** Where Workload API audit lines go; the logger by default. */
  readonly audit?: (e: WorkloadAuditEvent) => void;
  readonly tuning?: AgentTuning;
  /** Aborts a start-up still waiting for the server. */
  readonly signal?: AbortSignal;
}

export interface RunningAgent {
  readonly agentId: string;
  readonly socketPath: string;
  readonly manager: SvidManager;
  /** The node's TPM, as the agent holds it open (diagnostics). */
  readonly tpm: TpmDevice;
  /** The agent identity in use now. */
  readonly identity: AgentIdentity;
  /** Renews the agent SVID at once instead of at half-life. */
  renewAgentSvidNow(): Promise<void>;
  /** Stops serving (streams end with UNAVAILABLE), closes the server connection and the TPM. */
  stop(): Promise<void>;
}

/** Writes a file so that a crash leaves the old or the new content, never a mix. */
async function writeAtomically(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data, { mode: 0o600 });
  await rename(tmp, path);
}

async function loadOrCreateAk(config: AgentConfig, device: TpmDevice, log: Logger): Promise<AkBlobs> {
  const file = join(config.data_dir, `ak-${config.tpm.ek_kind}-${config.tpm.ak_kind}.json`);
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { public?: unknown; private?: unknown };
    if (typeof doc.public === 'string' && typeof doc.private === 'string') {
      return { public: Buffer.from(doc.public, 'base64'), private: Buffer.from(doc.private, 'base64') };
    }
    log.warn('the saved AK is malformed: creating a new one', { file });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn('the saved AK cannot be read: creating a new one', { file, err: e });
  }
  const blobs = await device.createAk(config.tpm.ek_kind, config.tpm.ak_kind);
  await writeAtomically(file, JSON.stringify({ public: blobs.public.toString('base64'), private: blobs.private.toString('base64') }));
  log.info('created a new attestation key', { file });
  return blobs;
}

/**
 * The AK at a persistent handle (faster on real TPMs than loading blobs under
 * the EK at every quote). Made once under the EK and persisted when the
 * handle is empty.
 */
async function persistentAk(handle: number, config: AgentConfig, device: TpmDevice, log: Logger): Promise<number> {
  const hex = `0x${handle.toString(16)}`;
  try {
    await device.flush(await device.akFromPersistent(handle));
    log.info('using the persistent attestation key', { handle: hex });
    return handle;
  } catch (e) {
    if (!(e instanceof TpmObjectError)) throw e;
  }
  const blobs = await device.createAk(config.tpm.ek_kind, config.tpm.ak_kind);
  const ak = await device.loadAk(config.tpm.ek_kind, blobs);
  try {
    await device.persistAk(ak, handle);
  } finally {
    await device.flush(ak);
  }
  log.info('created a new attestation key and made it persistent', { handle: hex });
  return handle;
}

/**
 * The agent key, loaded for the agent's lifetime: at its persistent handle
 * (made and persisted there once), or from blobs in data_dir (made once).
 */
async function openAgentKey(config: AgentConfig, device: TpmDevice, log: Logger): Promise<AgentKeyHandle> {
  const ek = config.tpm.ek_kind;
  const handle = config.tpm.agent_key_persistent_handle;
  if (handle !== undefined) {
    const hex = `0x${handle.toString(16)}`;
    try {
      const key = await device.agentKeyFromPersistent(handle);
      log.info('using the persistent agent key', { handle: hex });
      return key;
    } catch (e) {
      if (!(e instanceof TpmObjectError)) throw e;
    }
    const loaded = await device.loadAgentKey(ek, await device.createAgentKey(ek));
    try {
      await device.persistAk(loaded, handle);
    } finally {
      await device.flush(loaded);
    }
    log.info('created a new agent key in the TPM and made it persistent', { handle: hex });
    return device.agentKeyFromPersistent(handle);
  }
  const file = join(config.data_dir, `agent-key-${ek}.json`);
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as { public?: unknown; private?: unknown };
    if (typeof doc.public === 'string' && typeof doc.private === 'string') {
      return await device.loadAgentKey(ek, { public: Buffer.from(doc.public, 'base64'), private: Buffer.from(doc.private, 'base64') });
    }
    log.warn('the saved agent key is malformed: creating a new one', { file });
  } catch (e) {
    if (e instanceof TpmObjectError) log.warn('the saved agent key does not load in this TPM: creating a new one', { file, err: e });
    else if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && !(e instanceof SyntaxError)) throw e;
  }
  const blobs = await device.createAgentKey(ek);
  await writeAtomically(file, JSON.stringify({ public: blobs.public.toString('base64'), private: blobs.private.toString('base64') }));
  log.info('created a new agent key in the TPM', { file });
  return device.loadAgentKey(ek, blobs);
}

interface CachedBundle {
  readonly trust_domain: string;
  readonly x509_der: string;
  readonly jwks: string;
}

async function readCachedBundlePem(file: string, td: TrustDomain, log: Logger): Promise<string> {
  try {
    const doc = JSON.parse(await readFile(file, 'utf8')) as Partial<CachedBundle>;
    if (doc.trust_domain !== td.name || typeof doc.x509_der !== 'string') return '';
    return derBundleToPem(Buffer.from(doc.x509_der, 'base64'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn('the cached bundle cannot be read; using the bootstrap bundle only', { file, err: e });
    return '';
  }
}

/** Concatenated DER certificates (a bundle as the server sends it) → PEM. */
function derBundleToPem(der: Buffer): string {
  return parseDerCertificates(der, 1024)
    .map((c) => derToPem(c.raw))
    .join('');
}

function identityOf(svid: AgentSvid, key: AgentKey): AgentIdentity {
  return { spiffeId: svid.spiffeId, chain: svid.svidChain, sign: (d) => key.sign(d), expiresAt: svid.expiresAt, bundle: svid.bundle };
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AgentStartError('aborted', 'start-up was aborted'));
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(new AgentStartError('aborted', 'start-up was aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export async function startAgent(o: StartAgentOptions): Promise<RunningAgent> {
  const { config, logger: log } = o;
  const td: TrustDomain = config.trust_domain;
  const servers = new ServerAddresses(config.server.address.map(formatHostPort));
  try {
    await mkdir(config.data_dir, { recursive: true, mode: 0o700 });
    await chmod(config.data_dir, 0o700);
  } catch (e) {
    throw new AgentStartError('data-dir', `data_dir ${config.data_dir}: ${(e as Error).message}`);
  }
  let bootstrapPem: string;
  try {
    bootstrapPem = await readFile(config.server.bundle, 'utf8');
    if (!bootstrapPem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
  } catch (e) {
    throw new AgentStartError('bootstrap-bundle', `server.bundle ${config.server.bundle}: ${(e as Error).message}`);
  }
  const bundleFile = join(config.data_dir, 'bundle.json');
  let ownBundlePem = await readCachedBundlePem(bundleFile, td, log);
  const serverTrust = (): string => bootstrapPem + ownBundlePem;
  const clockToleranceMs = config.clock_skew_tolerance * 1000;
  /**
   * The server's certificate chains to no authority this agent trusts (it
   * missed a CA rotation): read the bootstrap bundle file again, which an
   * operator may have replaced with the current bundle. Nothing the server
   * sends is trusted for this (docs/agent.md, "Trust after a missed CA rotation").
   */
  const rereadBootstrap = async (detail: string): Promise<void> => {
    let fresh: string;
    try {
      fresh = await readFile(config.server.bundle, 'utf8');
      if (!fresh.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    } catch (e) {
      log.error(`the server's CA is not one this agent trusts, and server.bundle cannot be read again: ${(e as Error).message}`, { file: config.server.bundle, detail });
      return;
    }
    if (fresh !== bootstrapPem) {
      bootstrapPem = fresh;
      log.warn("the server's CA is not one this agent trusts (a CA rotation it missed?): server.bundle changed on disk, trusting the new bootstrap bundle", { file: config.server.bundle, detail });
    } else {
      log.error(
        "the server's CA is not one this agent trusts (a CA rotation it missed?): neither the cached bundle nor server.bundle has it; put the server's current bundle (keel bundle show) in server.bundle, the agent retries with it",
        { file: config.server.bundle, detail },
      );
    }
  };
  /**
   * The server's CA was new here but signed by one this agent trusts (its
   * rollover certificate after a rotation the agent did not see): the
   * connection is trusted, and the current bundle arrives over it and is
   * cached. Said once per CA.
   */
  const endorsedSeen = new Set<string>();
  const onServerCaEndorsed = (e: ServerCaEndorsement): void => {
    if (endorsedSeen.has(e.authority.fingerprint256)) return;
    endorsedSeen.add(e.authority.fingerprint256);
    log.warn("the server's CA is new to this agent (a CA rotation it missed); trusted because a CA this agent trusts signed it; the current bundle is fetched from the server", {
      authority: e.authority.subject,
      rolloverCertificateFingerprint: e.authority.fingerprint256,
      endorsedBy: e.endorsedBy.subject,
      endorsedByFingerprint: e.endorsedBy.fingerprint256,
      endorsementNotAfter: e.authority.notAfter,
    });
  };
  const eventLogPath = config.tpm.event_log ?? DEFAULT_EVENT_LOG;
  const ekKind = config.tpm.ek_kind;

  const tpmLog = log.child({ component: 'tpm' });
  const device = await TpmDevice.open(config.tpm.tcti, {
    onFault: (f) => {
      if (f.event === 'reconnected') tpmLog.info('the TPM connection is back; keys reload on use', { tcti: f.tcti, attempts: f.attempt });
      else if (f.event === 'connection-lost') tpmLog.warn('lost the connection to the TPM; reconnecting', { tcti: f.tcti, err: f.error });
      else tpmLog.warn(`the TPM is still unreachable, next attempt in ${formatDelay(f.retryInMs ?? 0)}`, { tcti: f.tcti, attempt: f.attempt, err: f.error });
    },
  });
  let session: NodeSession | undefined;
  let manager: SvidManager | undefined;
  let rotator: AgentSvidRotator | undefined;
  let workload: WorkloadApiServer | undefined;
  let agentKeyHandle: AgentKeyHandle | undefined;
  let checker: { stop(): Promise<void> } | undefined;
  try {
    const akRef = config.tpm.ak_persistent_handle !== undefined
      ? { akPersistentHandle: await persistentAk(config.tpm.ak_persistent_handle, config, device, log) }
      : { akBlobs: await loadOrCreateAk(config, device, log) };
    agentKeyHandle = await openAgentKey(config, device, log);
    const agentKey = tpmAgentKey(device, agentKeyHandle);
    const keyHandle = agentKeyHandle;
    const attest = async (): Promise<AgentIdentity> => {
      const svid = await attestNode({ device, ekKind, ...akRef, agentKey: keyHandle, eventLogPath, serverAddress: servers.current, serverCaBundle: serverTrust(), trustDomain: td.name, clockToleranceMs, onServerCaEndorsed });
      return identityOf(svid, agentKey);
    };

    // Attestation at start-up: retried with backoff whatever went wrong on
    // the way (server, TPM, clock, a refusal), each with its own log line;
    // only a fault no retry can mend (bad TPM objects, local files) is fatal.
    const backoff = new Backoff(o.tuning?.backoff);
    let identity: AgentIdentity;
    for (;;) {
      try {
        identity = await attest();
        break;
      } catch (e) {
        const why = startupFailure(e);
        if (!why) throw e;
        // Another server may be up: the next attempt goes there (after the same backoff).
        const tried = servers.current;
        const moved = why.reason === 'transport' ? servers.failedOver(tried) : undefined;
        if (moved) log.warn('server unreachable, attesting through the next server', { from: moved.from, to: moved.to, detail: why.detail });
        const delay = backoff.next();
        const fields = { reason: why.reason, detail: why.detail, attempt: backoff.attempts };
        if (why.reason === 'server-certificate-untrusted') await rereadBootstrap(why.detail);
        if (why.level === 'error') log.error(`${why.message}, retrying attestation in ${formatDelay(delay)}`, fields);
        else log.warn(`${why.message}, retrying attestation in ${formatDelay(delay)}`, fields);
        await sleep(delay, o.signal);
      }
    }
    log.info('node attested', { spiffeId: identity.spiffeId, expiresAt: identity.expiresAt });

    session = new NodeSession({
      address: servers,
      onFailover: (f) => log.warn('server unreachable, moving to the next server (no re-attestation)', f),
      trustDomain: td.name,
      serverTrust,
      svid: identity,
      clockToleranceMs,
      onServerCaEndorsed,
      onServerCertificateRefused: (e) => {
        if (e.reason === 'server-certificate-untrusted') void rereadBootstrap(e.detail);
        else log.warn(`the server's certificate is refused (${e.reason})`, { reason: e.reason, detail: e.detail });
      },
      ...(o.tuning?.keepaliveMs ? { keepaliveMs: o.tuning.keepaliveMs } : {}),
    });
    const saveBundle = (b: BundleSnapshot): void => {
      ownBundlePem = derBundleToPem(b.own.x509Der);
      const doc: CachedBundle = { trust_domain: td.name, x509_der: b.own.x509Der.toString('base64'), jwks: b.own.jwks.toString('utf8') };
      writeAtomically(bundleFile, JSON.stringify(doc)).catch((e: unknown) => log.warn('saving the bundle failed', { file: bundleFile, err: e }));
    };
    manager = new SvidManager({
      trustDomain: td,
      node: session,
      generateKey: svidKeyGenerator(config.workload_api.svid_key_type),
      logger: log.child({ component: 'svid-manager' }),
      initialX509Bundle: identity.bundle,
      agentSvidExpiresAt: identity.expiresAt,
      clockToleranceMs,
      onBundles: saveBundle,
      onIdentityLost: (reason, detail) => loseIdentity(reason, detail),
      ...(o.tuning?.backoff ? { backoff: o.tuning.backoff } : {}),
    });
    const m = manager;
    const s = session;
    // Set when the server says the agent SVID no longer counts: the next renewal is a full attestation.
    let lost = false;
    const loseIdentity = (reason: string, detail: string): void => {
      if (lost) return;
      lost = true;
      log.error(`the server no longer accepts this node's identity (${reason}): dropping every SVID and attesting again`, { reason, detail });
      m.revokeIdentity(reason);
      void rotator?.renewNow();
    };
    rotator = new AgentSvidRotator({
      initial: identity,
      logger: log.child({ component: 'agent-svid' }),
      ...(o.tuning?.backoff ? { backoff: o.tuning.backoff } : {}),
      renew: async (current) => {
        // An expired or disowned SVID cannot authenticate a renewal: attest from the start.
        if (lost || current.expiresAt.getTime() <= Date.now()) {
          const next = await attest();
          lost = false;
          return next;
        }
        const svid = await renewAgentSvid({
          device,
          ekKind,
          ...akRef,
          svid: current,
          agentKey: keyHandle,
          exchange: (method, params, answer) => s.exchange(method, params, answer),
          eventLogPath,
          serverAddress: servers.current,
          serverCaBundle: serverTrust(),
          trustDomain: td.name,
          clockToleranceMs,
          onServerCaEndorsed,
        });
        return identityOf(svid, agentKey);
      },
      onRenewed: (next) => {
        s.setSvid(next);
        m.setAgentSvidExpiry(next.expiresAt);
      },
    });
    manager.start();
    rotator.start();
    checker = startContinuousAttestation({
      intervalMs: config.attestation_interval * 1000,
      log: log.child({ component: 'attestation' }),
      check: (lastEventLogSha256) =>
        checkNode({ exchange: (method, params, answer) => s.exchange(method, params, answer), device, ekKind, ...akRef, eventLogPath, ...(lastEventLogSha256 ? { lastEventLogSha256 } : {}) }),
      skip: () => lost || !m.agentActive,
      onLost: (reason, detail) => loseIdentity(reason, detail),
    });
    const ready = await manager.ready(o.tuning?.readyTimeoutMs ?? 10_000);
    if (!ready) log.warn('no entries from the server yet: the Workload API opens anyway and serves them when they come');

    // Issued and refused identities are audit lines (`audit: true`), like the server's svid.* events.
    const wlAudit = auditLog(log.child({ component: 'workload-api' }));
    const wl = config.workload_api;
    workload = await startWorkloadApiServer({
      socketPath: wl.socket_path,
      source: manager,
      audit: o.audit ?? ((e) => wlAudit.record(workloadAuditEvent(e))),
      idleConnectionTimeoutMs: wl.idle_timeout * 1000,
      limits: {
        maxConnections: wl.max_connections,
        maxConnectionsPerUid: wl.max_connections_per_uid,
        maxStreamsPerUid: wl.max_streams_per_uid,
        firstCallTimeoutMs: wl.first_call_timeout * 1000,
      },
    });
    log.info('Workload API listening', { socketPath: workload.socketPath, entries: manager.stats.entries, svids: manager.stats.svids });
  } catch (e) {
    await workload?.stop(500).catch(() => undefined);
    await checker?.stop();
    await rotator?.stop();
    manager?.stop();
    session?.close();
    await device.close().catch(() => undefined);
    throw e;
  }

  const wl = workload;
  const mgr = manager;
  const rot = rotator;
  const sess = session;
  const chk = checker;
  let stopping: Promise<void> | undefined;
  return {
    agentId: rot.current.spiffeId,
    socketPath: wl.socketPath,
    manager: mgr,
    tpm: device,
    get identity() {
      return rot.current;
    },
    renewAgentSvidNow: () => rot.renewNow(),
    stop() {
      stopping ??= (async () => {
        log.info('agent stopping');
        await wl.stop();
        await chk?.stop();
        await rot.stop();
        mgr.stop();
        sess.close();
        await device.close();
        log.info('agent stopped');
      })();
      return stopping;
    },
  };
}

/** Why a start-up attestation failed, if another attempt may succeed; undefined when it cannot. */
function startupFailure(e: unknown): { reason: string; detail: string; message: string; level: 'warn' | 'error' } | undefined {
  if (e instanceof NodeApiError) {
    if (e.reason === 'transport') return { reason: e.reason, detail: e.detail, message: 'server unreachable', level: 'warn' };
    if (e.reason === 'tpm') return { reason: e.reason, detail: e.detail, message: 'the TPM failed', level: 'warn' };
    if (e.reason === 'server-certificate-clock') {
      return { reason: e.reason, detail: e.detail, message: "the server's certificate is not valid at this node's clock: check the clock, or raise agent.clock_skew_tolerance", level: 'error' };
    }
    if (e.reason === 'server-certificate-untrusted') return { reason: e.reason, detail: e.detail, message: "the server's certificate chains to no CA this agent trusts", level: 'error' };
    return { reason: e.reason, detail: e.detail, message: `attestation refused by the server (${e.reason})`, level: 'error' };
  }
  if (e instanceof TpmConnectionError || e instanceof TpmError) return { reason: 'tpm', detail: `${e.name}: ${e.message}`, message: 'the TPM failed', level: 'warn' };
  if (e instanceof AgentClockError) return { reason: 'clock', detail: e.message, message: "what the server issued is not valid at this node's clock", level: 'error' };
  if (e instanceof AgentAttestationError || e instanceof X509SvidError) return { reason: 'bad-result', detail: e.message, message: 'the server returned an SVID the agent refuses', level: 'error' };
  return undefined;
}

/** Refusals of a continuous attestation that mean the node no longer holds its identity. */
const LOST_ON_CHECK: ReadonlySet<string> = new Set(['policy', 'eventlog-replay', 'pcr-digest', 'clock-rollback', 'not-active', 'superseded', 'banned', 'unknown-node', 'ak-changed']);

/**
 * A fresh quote every interval on the existing server connection. The TPM
 * work runs off the main thread and the Workload API answers from memory, so
 * a slow TPM delays a quote, never a workload's answer.
 */
function startContinuousAttestation(o: {
  readonly intervalMs: number;
  readonly log: Logger;
  readonly check: (lastEventLogSha256: Buffer | undefined) => Promise<{ eventLogSha256: Buffer }>;
  readonly skip: () => boolean;
  readonly onLost: (reason: string, detail: string) => void;
}): { stop(): Promise<void> } | undefined {
  if (o.intervalMs <= 0) return undefined;
  let last: Buffer | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  const once = async (): Promise<void> => {
    if (stopped || o.skip()) return;
    try {
      last = (await o.check(last)).eventLogSha256;
    } catch (e) {
      if (e instanceof TpmDeviceError) {
        // The node's TPM, not the server: the device reconnects by itself.
        o.log.warn(`continuous attestation failed: the TPM failed (${e.name}); trying again in ${formatDelay(o.intervalMs)}`, { reason: 'tpm', detail: e.message });
        return;
      }
      const err = NodeApiError.from(e);
      if (LOST_ON_CHECK.has(err.reason)) {
        last = undefined;
        o.onLost(err.reason, err.detail);
      } else {
        o.log.warn(`continuous attestation failed (${err.reason}); trying again in ${formatDelay(o.intervalMs)}`, { reason: err.reason, detail: err.detail });
      }
    }
  };
  const timer = setInterval(() => {
    running ??= once().finally(() => (running = undefined));
  }, o.intervalMs);
  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
