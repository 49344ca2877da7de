/**
 * The agent's half of node attestation: EK and AK from the TPM, credential
 * activation, a quote over the PCRs the server asks for, the event log, and
 * the agent SVID back. Renewal repeats the quote over mTLS with the same AK.
 */
import { derToPem } from '../../spiffe/der.js';
import { X509Certificate, createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { AkBlobs, AkHandle, AkKind, EkKind, PcrBank, TpmDevice } from '../../tpm/device.js';
import { QuoteVerificationError, TPM_ALG, parseTpmtPublic, verifyQuote, type TpmlPcrSelection } from '../../tpm/index.js';
import { bundleFromX509Der, verifyX509Svid } from '../../spiffe/index.js';
import { buildCsr } from '../../spiffe/csr.js';
import { NodeApiClient, type WireAnswer, type WireAttestResult, type WireChallenge } from './node-api-client.js';

/** Largest event log the agent sends (the server has its own cap). */
export const MAX_EVENT_LOG_BYTES = 16 * 1024 * 1024;
/** A PCR may be extended between the quote and the read; try again this many times. */
const QUOTE_ATTEMPTS = 3;
const BANK_ALG: Readonly<Record<PcrBank, number>> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384 };

export class AgentAttestationError extends Error {
  override readonly name = 'AgentAttestationError';
}

export interface ServerConnection {
  /** `host:port` of the server's Node API. */
  readonly serverAddress: string;
  /** PEM: the bootstrap trust for the server's SVID (later, the trust bundle). */
  readonly serverCaBundle: string | Buffer;
  readonly trustDomain: string;
}

export interface AttestNodeOptions extends ServerConnection {
  readonly device: TpmDevice;
  readonly ekKind: EkKind;
  /** An AK made earlier under the same EK (kept on disk); a new one is created when absent. */
  readonly akBlobs?: AkBlobs;
  /** An AK persistent in the TPM at this handle (0x81xxxxxx): used instead of blobs. */
  readonly akPersistentHandle?: number;
  readonly akKind?: AkKind;
  /** The agent's TLS key; the SVID certifies it. */
  readonly csrKey: KeyObject;
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
  /** The current agent SVID (chain DER, leaf first) and its key: the mTLS client identity. */
  readonly svid: { readonly chain: readonly Buffer[]; readonly key: KeyObject };
  /** The key the new SVID certifies (may be the same key). */
  readonly csrKey: KeyObject;
  readonly eventLogPath?: string;
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
function acceptResult(r: WireAttestResult, key: KeyObject, trustDomain: string, akBlobs: AkBlobs | undefined): AgentSvid {
  const chain = r.svid_chain.map((d) => new X509Certificate(d));
  const leaf = chain[0];
  if (!leaf) throw new AgentAttestationError('the server returned no SVID');
  if (!leaf.publicKey.equals(createPublicKey(key))) throw new AgentAttestationError('the SVID does not certify the key of the CSR');
  const id = verifyX509Svid(chain, bundleFromX509Der(trustDomain, r.bundle)).id;
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

/** Attests the node and returns its agent SVID. Rejects with NodeApiError (server's reason) or a TPM error. */
export async function attestNode(o: AttestNodeOptions): Promise<AgentSvid> {
  const ekPublic = await o.device.ekPublic(o.ekKind);
  const ekCertificate = await o.device.ekCertificate(o.ekKind);
  const akBlobs = o.akPersistentHandle !== undefined ? undefined : (o.akBlobs ?? (await o.device.createAk(o.ekKind, o.akKind ?? 'ecc-p256')));
  const csr = buildCsr(o.csrKey);
  const eventLog = await readEventLog(o.eventLogPath);
  const { handle: ak, public: akPublic } = await openAk(o.device, o.ekKind, { akBlobs, akPersistentHandle: o.akPersistentHandle });
  const client = new NodeApiClient({ address: o.serverAddress, serverCaBundle: o.serverCaBundle, trustDomain: o.trustDomain });
  try {
    const result = await client.exchange(
      'Attest',
      { ek_public: ekPublic, ek_certificate: ekCertificate ?? Buffer.alloc(0), ak_public: akPublic, csr },
      async (challenge) => {
        const secret = await o.device.activateCredential(ak, o.ekKind, challenge.credential_blob, challenge.encrypted_secret);
        const quoted = await quoteForChallenge(o.device, ak, akPublic, challenge);
        return { secret, ...quoted, event_log: eventLog ?? Buffer.alloc(0) };
      },
    );
    return acceptResult(result, o.csrKey, o.trustDomain, akBlobs);
  } finally {
    client.close();
    await o.device.flush(ak);
  }
}

/** Renews the agent SVID over mTLS with a fresh quote from the same AK. */
export async function renewAgentSvid(o: RenewAgentSvidOptions): Promise<AgentSvid> {
  const csr = buildCsr(o.csrKey);
  const eventLog = await readEventLog(o.eventLogPath);
  const { handle: ak, public: akPublic } = await openAk(o.device, o.ekKind, o);
  const client = new NodeApiClient({
    address: o.serverAddress,
    serverCaBundle: o.serverCaBundle,
    trustDomain: o.trustDomain,
    clientSvid: { chainPem: o.svid.chain.map((d) => derToPem(d)).join(''), key: o.svid.key },
  });
  try {
    const result = await client.exchange('RenewAgent', { ak_public: akPublic, csr }, async (challenge) => ({
      ...(await quoteForChallenge(o.device, ak, akPublic, challenge)),
      event_log: eventLog ?? Buffer.alloc(0),
    }));
    return acceptResult(result, o.csrKey, o.trustDomain, o.akBlobs);
  } finally {
    client.close();
    await o.device.flush(ak);
  }
}
