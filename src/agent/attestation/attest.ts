/**
 * The agent's half of node attestation: EK and AK from the TPM, credential
 * activation, a quote over the PCRs the server asks for, the event log, and
 * the agent SVID back. Renewal repeats the quote over mTLS with the same AK.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { AgentKeyHandle, AkBlobs, AkHandle, AkKind, EkKind, PcrBank, TpmDevice } from '../../tpm/device.js';
import { QuoteVerificationError, TPM_ALG, parseTpmtPublic, verifyQuote, type TpmlPcrSelection } from '../../tpm/index.js';
import { bundleFromX509Der, verifyX509Svid, X509SvidError } from '../../spiffe/index.js';
import { buildCsrWithSigner } from '../../spiffe/csr.js';
import { tpmAgentKey, type AgentCredential, type AgentKey } from './credential.js';
import { NodeApiClient, type Exchange, type NodeApiClientOptions, type WireAnswer, type WireAttestResult, type WireChallenge } from './node-api-client.js';
import type { ServerCaEndorsement } from './bound-credentials.js';

/** Largest event log the agent sends (the server has its own cap). */
export const MAX_EVENT_LOG_BYTES = 16 * 1024 * 1024;
/** A PCR may be extended between the quote and the read; try again this many times. */
const QUOTE_ATTEMPTS = 3;
const BANK_ALG: Readonly<Record<PcrBank, number>> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384 };

export class AgentAttestationError extends Error {
  override readonly name: string = 'AgentAttestationError';
}

/** What the server issued is outside its validity at this node's clock, beyond the tolerance. */
export class AgentClockError extends AgentAttestationError {
  override readonly name = 'AgentClockError';
}

export interface ServerConnection {
  /** `host:port` of the server's Node API. */
  readonly serverAddress: string;
  /** PEM: the bootstrap trust for the server's SVID (later, the trust bundle). */
  readonly serverCaBundle: string | Buffer;
  readonly trustDomain: string;
  /** Clock skew tolerated when checking what the server issued: its TLS certificate, the agent SVID (ms, default 0). */
  readonly clockToleranceMs?: number;
  /** The server's CA was new to this agent and accepted through a rollover certificate. */
  readonly onServerCaEndorsed?: (e: ServerCaEndorsement) => void;
}

export interface AttestNodeOptions extends ServerConnection {
  readonly device: TpmDevice;
  readonly ekKind: EkKind;
  /** An AK made earlier under the same EK (kept on disk); a new one is created when absent. */
  readonly akBlobs?: AkBlobs;
  /** An AK persistent in the TPM at this handle (0x81xxxxxx): used instead of blobs. */
  readonly akPersistentHandle?: number;
  readonly akKind?: AkKind;
  /** The agent key, loaded in the same TPM: the SVID certifies it, the AK certifies that it lives there. */
  readonly agentKey: AgentKeyHandle;
  /** Measured-boot log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements; absent is fine (swtpm has none). */
  readonly eventLogPath?: string;
}

export interface AgentSvid {
  readonly spiffeId: string;
  /** DER, leaf first. */
  readonly svidChain: readonly Buffer[];
  /** The trust bundle's X.509 authorities, concatenated DER. */
  readonly bundle: Buffer;
  readonly expiresAt: Date;
  readonly selectors: readonly string[];
  /** The AK the node attested with, when it came as blobs: keep it, renewal must quote with the same one. */
  readonly akBlobs: AkBlobs | undefined;
}

export interface RenewAgentSvidOptions extends ServerConnection {
  readonly device: TpmDevice;
  readonly ekKind: EkKind;
  /** The AK the node attested with: its blobs, or its persistent handle. */
  readonly akBlobs?: AkBlobs;
  readonly akPersistentHandle?: number;
  /** The current agent SVID (chain DER, leaf first) with its key: the connection is bound to it. */
  readonly svid: AgentCredential;
  /** The agent key the new SVID certifies (the same TPM-resident key). */
  readonly agentKey: AgentKeyHandle;
  readonly eventLogPath?: string;
  /** Runs the exchange on an existing bound connection (the agent's NodeSession) instead of a new one. */
  readonly exchange?: Exchange;
}

export interface CheckNodeOptions {
  /** Runs the exchange on the agent's existing bound connection (NodeSession.exchange). */
  readonly exchange: Exchange;
  readonly device: TpmDevice;
  readonly ekKind: EkKind;
  readonly akBlobs?: AkBlobs;
  readonly akPersistentHandle?: number;
  readonly eventLogPath?: string;
  /** SHA-256 of the log the server verified last: when the log is unchanged only this is sent. */
  readonly lastEventLogSha256?: Buffer;
}


/** A CSR for the agent key, signed in the TPM. */
function agentCsr(key: AgentKey): Promise<Buffer> {
  return buildCsrWithSigner(key.publicKey, (tbs) => key.sign(tbs));
}

async function readEventLog(path: string | undefined): Promise<Buffer | undefined> {
  if (!path) return undefined;
  try {
    const b = await readFile(path);
    if (b.length > MAX_EVENT_LOG_BYTES) throw new AgentAttestationError(`the event log ${path} is ${b.length} bytes, over ${MAX_EVENT_LOG_BYTES}`);
    return b;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

function selectionOf(challenge: WireChallenge): { tpm: TpmlPcrSelection; device: { bank: PcrBank; pcrs: number[] }[] } {
  const device = challenge.pcr_selection.map((s) => {
    if (!(s.bank in BANK_ALG)) throw new AgentAttestationError(`the server asked for PCR bank ${JSON.stringify(s.bank)}`);
    return { bank: s.bank as PcrBank, pcrs: [...new Set(s.pcrs)].sort((a, b) => a - b) };
  });
  if (device.length === 0) throw new AgentAttestationError('the server asked for no PCRs');
  return { tpm: device.map((s) => ({ hashAlg: BANK_ALG[s.bank], pcrs: s.pcrs })), device };
}

/**
 * Quote of the PCRs the challenge names with its nonce, and the values read
 * after it. A PCR extended in between makes the digest disagree: quote again.
 */
export async function quoteForChallenge(
  device: TpmDevice,
  ak: AkHandle,
  akPublic: Buffer,
  challenge: WireChallenge,
): Promise<Required<Pick<WireAnswer, 'quote' | 'quote_signature' | 'pcr_values'>>> {
  const sel = selectionOf(challenge);
  const akPub = parseTpmtPublic(akPublic);
  for (let attempt = 1; ; attempt++) {
    const q = await device.quote(ak, sel.device, challenge.nonce);
    const read = await device.pcrRead(sel.device);
    const ordered = sel.device.flatMap((s) => s.pcrs.map((p) => read.get(s.bank)?.get(p) ?? Buffer.alloc(0)));
    try {
      verifyQuote({ akPublic: akPub, attest: q.attest, signature: q.signature, nonce: challenge.nonce, expectedSelection: sel.tpm, pcrValues: ordered });
    } catch (e) {
      if (e instanceof QuoteVerificationError && e.reason === 'pcr-digest' && attempt < QUOTE_ATTEMPTS) continue;
      throw e;
    }
    return {
      quote: q.attest,
      quote_signature: q.signature,
      pcr_values: sel.device.map((s) => ({
        bank: s.bank,
        values: Object.fromEntries(s.pcrs.map((p) => [String(p), read.get(s.bank)!.get(p)!])),
      })),
    };
  }
}

/** Checks what the server returned: an SVID for our key that verifies against the bundle it sent. */
function acceptResult(r: WireAttestResult, key: AgentKey, trustDomain: string, akBlobs: AkBlobs | undefined, clockToleranceMs = 0): AgentSvid {
  const chain = r.svid_chain.map((d) => new X509Certificate(d));
  const leaf = chain[0];
  if (!leaf) throw new AgentAttestationError('the server returned no SVID');
  if (!leaf.publicKey.equals(key.publicKey)) throw new AgentAttestationError('the SVID does not certify the agent key');
  let id;
  try {
    id = verifyX509Svid(chain, bundleFromX509Der(trustDomain, r.bundle), { clockToleranceMs }).id;
  } catch (e) {
    if (e instanceof X509SvidError && (e.rule === 'not-yet-valid' || e.rule === 'expired')) {
      throw new AgentClockError(`the agent SVID the server issued is not valid at this node's clock (${new Date().toISOString()}): ${e.message}; check the clock, or raise agent.clock_skew_tolerance`);
    }
    throw e;
  }
  if (id.toString() !== r.spiffe_id) throw new AgentAttestationError(`the SVID names ${id.toString()}, the server said ${r.spiffe_id}`);
  return { spiffeId: r.spiffe_id, svidChain: r.svid_chain, bundle: r.bundle, expiresAt: new Date(r.expires_at * 1000), selectors: r.selectors, akBlobs };
}

/** Loads the AK from its blobs (under the EK) or reaches it at its persistent handle. */
async function openAk(device: TpmDevice, ekKind: EkKind, ref: { akBlobs?: AkBlobs | undefined; akPersistentHandle?: number | undefined }): Promise<{ handle: AkHandle; public: Buffer }> {
  if (ref.akPersistentHandle !== undefined) {
    const h = await device.akFromPersistent(ref.akPersistentHandle);
    return { handle: h, public: h.public };
  }
  if (!ref.akBlobs) throw new AgentAttestationError('no AK: give its blobs or its persistent handle');
  return { handle: await device.loadAk(ekKind, ref.akBlobs), public: ref.akBlobs.public };
}

/** Runs `f` with the AK open; the AK is flushed afterwards, whatever happened. */
async function withAk<T>(
  device: TpmDevice,
  ekKind: EkKind,
  ref: { akBlobs?: AkBlobs | undefined; akPersistentHandle?: number | undefined },
  f: (ak: AkHandle, akPublic: Buffer) => Promise<T>,
): Promise<T> {
  const { handle: ak, public: akPublic } = await openAk(device, ekKind, ref);
  try {
    return await f(ak, akPublic);
  } finally {
    await device.flush(ak);
  }
}

function connectionOf(o: ServerConnection): NodeApiClientOptions {
  return {
    address: o.serverAddress,
    serverCaBundle: o.serverCaBundle,
    trustDomain: o.trustDomain,
    clockToleranceMs: o.clockToleranceMs ?? 0,
    ...(o.onServerCaEndorsed ? { onServerCaEndorsed: o.onServerCaEndorsed } : {}),
  };
}

/** Runs `f` with `given`, or with the exchange of a new client for `options`, closed afterwards. */
async function withExchange<T>(given: Exchange | undefined, options: NodeApiClientOptions, f: (exchange: Exchange) => Promise<T>): Promise<T> {
  if (given) return f(given);
  const client = new NodeApiClient(options);
  try {
    return await f((m, p, a) => client.exchange(m, p, a));
  } finally {
    client.close();
  }
}

/** The AK's certification of the agent key over the challenge nonce: the key lives in this TPM. */
async function certifyAgentKey(device: TpmDevice, agentKey: AgentKeyHandle, ak: AkHandle, challenge: WireChallenge): Promise<Pick<WireAnswer, 'agent_key_certify' | 'agent_key_certify_signature'>> {
  const certified = await device.certify(agentKey, ak, challenge.nonce);
  return { agent_key_certify: certified.attest, agent_key_certify_signature: certified.signature };
}

/** Attests the node and returns its agent SVID. Rejects with NodeApiError (server's reason) or a TPM error. */
export async function attestNode(o: AttestNodeOptions): Promise<AgentSvid> {
  const ekPublic = await o.device.ekPublic(o.ekKind);
  const ekCertificate = await o.device.ekCertificate(o.ekKind);
  const akBlobs = o.akPersistentHandle !== undefined ? undefined : (o.akBlobs ?? (await o.device.createAk(o.ekKind, o.akKind ?? 'ecc-p256')));
  const key = tpmAgentKey(o.device, o.agentKey);
  const csr = await agentCsr(key);
  const eventLog = await readEventLog(o.eventLogPath);
  return withAk(o.device, o.ekKind, { akBlobs, akPersistentHandle: o.akPersistentHandle }, (ak, akPublic) =>
    withExchange(undefined, connectionOf(o), async (exchange) => {
      const result = await exchange(
        'Attest',
        { ek_public: ekPublic, ek_certificate: ekCertificate ?? Buffer.alloc(0), ak_public: akPublic, csr, agent_key_public: o.agentKey.public },
        async (challenge) => {
          const secret = await o.device.activateCredential(ak, o.ekKind, challenge.credential_blob, challenge.encrypted_secret);
          const quoted = await quoteForChallenge(o.device, ak, akPublic, challenge);
          return { secret, ...quoted, event_log: eventLog ?? Buffer.alloc(0), ...(await certifyAgentKey(o.device, o.agentKey, ak, challenge)) };
        },
      );
      return acceptResult(result, key, o.trustDomain, akBlobs, o.clockToleranceMs);
    }),
  );
}

/** Renews the agent SVID on a connection bound to the current one, with a fresh quote from the same AK. */
export async function renewAgentSvid(o: RenewAgentSvidOptions): Promise<AgentSvid> {
  const key = tpmAgentKey(o.device, o.agentKey);
  const csr = await agentCsr(key);
  const eventLog = await readEventLog(o.eventLogPath);
  const connection = { ...connectionOf(o), clientSvid: o.svid };
  return withAk(o.device, o.ekKind, o, (ak, akPublic) =>
    withExchange(o.exchange, connection, async (exchange) => {
      const result = await exchange('RenewAgent', { ak_public: akPublic, csr, agent_key_public: o.agentKey.public }, async (challenge) => {
        const certified = await certifyAgentKey(o.device, o.agentKey, ak, challenge);
        return { ...(await quoteForChallenge(o.device, ak, akPublic, challenge)), event_log: eventLog ?? Buffer.alloc(0), ...certified };
      });
      return acceptResult(result, key, o.trustDomain, o.akBlobs, o.clockToleranceMs);
    }),
  );
}

/**
 * One continuous attestation: a fresh quote on a bound connection, the event
 * log only when it changed since the last one the server verified. Resolves
 * with the SHA-256 of the log the server now holds (empty when none);
 * rejects with NodeApiError('policy', …) when the node is out of policy.
 */
export async function checkNode(o: CheckNodeOptions): Promise<{ eventLogSha256: Buffer; selectors: readonly string[] }> {
  const eventLog = (await readEventLog(o.eventLogPath)) ?? Buffer.alloc(0);
  const sha = eventLog.length ? createHash('sha256').update(eventLog).digest() : Buffer.alloc(0);
  const unchanged = sha.length > 0 && o.lastEventLogSha256?.equals(sha) === true;
  return withAk(o.device, o.ekKind, o, async (ak, akPublic) => {
    const exchange = (sendLog: boolean): Promise<WireAttestResult> =>
      o.exchange('Check', { ak_public: akPublic }, async (challenge) => ({
        ...(await quoteForChallenge(o.device, ak, akPublic, challenge)),
        event_log: sendLog ? eventLog : Buffer.alloc(0),
        event_log_sha256: sendLog ? Buffer.alloc(0) : sha,
      }));
    let result: WireAttestResult;
    try {
      result = await exchange(!unchanged);
    } catch (e) {
      // The server lost its copy (restart, another server): send the log whole once.
      if (!unchanged || (e as { reason?: string }).reason !== 'eventlog-required') throw e;
      result = await exchange(true);
    }
    return { eventLogSha256: sha, selectors: result.selectors };
  });
}
