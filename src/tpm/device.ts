/**
 * A TPM 2.0 reached through tpm2-tss (ESAPI + TCTI loader) in keel's native
 * addon. Every call runs on a worker thread, one at a time per device, and
 * returns a promise; the event loop never waits on the TPM.
 *
 * TPM structures cross this boundary as marshalled TPM wire bytes (big-endian,
 * as the TPM 2.0 spec Part 2 defines them); parse them with src/tpm's parsers.
 *
 * Transient objects and sessions: an EK derived from its template, and the
 * policy session that authorizes it, live for one call and are flushed on
 * every path. An AK stays loaded from loadAk()/akFromPersistent() until
 * flush() or close(). swtpm (no resource manager) has 3 object slots, so hold
 * at most two AKs at once there.
 *
 * A broken connection (the TPM or the link to it went away: a TCTI failure,
 * or ESYS left unable to continue) fails the call with TpmConnectionError
 * (`lost: true`). The device then reopens it by itself on a later call: the
 * ESYS context is finalized and built again on a new TCTI, with backoff
 * between attempts (calls in between fail fast with `retryInMs`), and every
 * attempt is reported to `onFault`. Keys loaded before (AkHandle,
 * AgentKeyHandle) keep working: the addon remembers how each was loaded (its
 * blobs under the EK, or its persistent handle), flushes the old copy if the
 * TPM still holds it, and loads it again on its next use, refusing one that
 * comes back with another name (TpmObjectError).
 */
import { nativeAddon, type NativePcrSel, type NativeTpmDevice } from '../os/native-addon.js';
import { brokeConnection, fromNative, TpmArgumentError, TpmConnectionError, TpmDeviceClosedError, TpmStaleHandleError, type TpmDeviceError } from './tpm-error.js';

export type PcrBank = 'sha1' | 'sha256' | 'sha384';
/** The TCG default EKs: RSA-2048 (template L-1), ECC P-256 (L-2), ECC P-384 high range (H-3). */
export type EkKind = 'rsa-2048' | 'ecc-p256' | 'ecc-p384';
/** AK: restricted signing key, ECDSA-SHA256 on P-256 or RSASSA-SHA256 with RSA-2048. */
export type AkKind = 'ecc-p256' | 'rsa-2048';

export interface PcrSelection {
  readonly bank: PcrBank;
  /** PCR indexes 0..23, any order; duplicates are merged. */
  readonly pcrs: readonly number[];
}

/** PCR values by bank, then by index (ascending). */
export type PcrValues = Map<PcrBank, Map<number, Buffer>>;

/** What createAk() returns: enough to load the same AK again later. */
export interface AkBlobs {
  /** TPMT_PUBLIC bytes (the contents of the TPM2B_PUBLIC, without its u16 size). */
  readonly public: Buffer;
  /** TPM2B_PRIVATE contents (without the u16 size): the AK's sensitive area wrapped by the EK. */
  readonly private: Buffer;
}

/** A loaded AK. Opaque; valid on the device that made it until flush() or close(). */
export interface AkHandle {
  /** The AK's TPM name: nameAlg (u16) || H(TPMT_PUBLIC), 34 bytes for SHA-256. */
  readonly name: Buffer;
  /** The persistent handle this AK was reached through (akFromPersistent), if any. */
  readonly persistentHandle: number | undefined;
}

/**
 * A loaded agent key: an unrestricted ECDSA P-256 signing key made under the
 * EK, fixedTPM and fixedParent, so its private part never leaves this TPM.
 * Opaque like AkHandle, and not interchangeable with one.
 */
export interface AgentKeyHandle {
  readonly kind: 'agent-key';
  readonly name: Buffer;
  /** TPMT_PUBLIC bytes of the key. */
  readonly public: Buffer;
  readonly persistentHandle: number | undefined;
}

/** What createAgentKey() returns: TPMT_PUBLIC and the TPM2B_PRIVATE contents wrapped by the EK. */
export type AgentKeyBlobs = AkBlobs;

export interface QuoteResult {
  /** TPMS_ATTEST bytes (the contents of the TPM2B_ATTEST): what the signature covers. */
  readonly attest: Buffer;
  /** TPMT_SIGNATURE bytes (sigAlg u16, hashAlg u16, then the scheme's signature). */
  readonly signature: Buffer;
}

/** TCG EK Credential Profile NV indexes of EK certificates. */
export const EK_CERT_NV_INDEX: Readonly<Record<EkKind, number>> = {
  'rsa-2048': 0x01c00002,
  'ecc-p256': 0x01c0000a,
  'ecc-p384': 0x01c00016,
};

/** Where provisioning tools persist the EKs; used when present and matching the template. */
export const EK_PERSISTENT_HANDLE: Readonly<Record<EkKind, number>> = {
  'rsa-2048': 0x81010001,
  'ecc-p256': 0x81010002,
  'ecc-p384': 0x81010016,
};

const BANK_ALG: Readonly<Record<PcrBank, number>> = { sha1: 0x0004, sha256: 0x000b, sha384: 0x000c };
const ALG_BANK = new Map<number, PcrBank>(Object.entries(BANK_ALG).map(([b, a]) => [a, b as PcrBank]));
const BANK_SIZE: Readonly<Record<PcrBank, number>> = { sha1: 20, sha256: 32, sha384: 48 };
const EK_CODE: Readonly<Record<EkKind, number>> = { 'rsa-2048': 0, 'ecc-p256': 1, 'ecc-p384': 2 };
const AK_CODE: Readonly<Record<AkKind, number>> = { 'ecc-p256': 0, 'rsa-2048': 1 };

/** Largest getRandom() request: more is surely a bug, and each 32-48 bytes is one TPM command. */
export const MAX_RANDOM_BYTES = 65536;
/** Largest quote nonce (qualifyingData): a digest of up to SHA-512 size. */
export const MAX_NONCE_BYTES = 64;

/** What a device reports about its connection; each is worth a warning, but 'reconnected'. */
export interface TpmFaultEvent {
  readonly event: 'connection-lost' | 'reconnect-failed' | 'reconnected';
  readonly tcti: string;
  /** Reconnection attempts since the connection was lost (0 for 'connection-lost'). */
  readonly attempt: number;
  /** What failed ('connection-lost', 'reconnect-failed'). */
  readonly error?: TpmDeviceError;
  /** Delay before the next reconnection attempt ('connection-lost', 'reconnect-failed'). */
  readonly retryInMs?: number;
}

export interface TpmDeviceOptions {
  /** Called on every loss of the connection, failed reconnection and reconnection. */
  readonly onFault?: (e: TpmFaultEvent) => void;
  /** Delays between reconnection attempts: from initialMs (default 250), doubling to maxMs (default 10 000). */
  readonly reconnectBackoff?: { readonly initialMs?: number; readonly maxMs?: number };
}

interface AkState {
  readonly device: TpmDevice;
  readonly id: number;
}
const akState = new WeakMap<AkHandle | AgentKeyHandle, AkState>();

function isInt(n: unknown, lo: number, hi: number): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= lo && n <= hi;
}

function checkBuffer(b: unknown, what: string, max: number): asserts b is Buffer {
  if (!Buffer.isBuffer(b)) throw new TpmArgumentError(`${what} must be a Buffer`);
  if (b.length === 0 || b.length > max) throw new TpmArgumentError(`${what} must be 1..${max} bytes, got ${b.length}`);
}

function ekCode(kind: EkKind): number {
  const c = typeof kind === 'string' && Object.hasOwn(EK_CODE, kind) ? EK_CODE[kind] : undefined;
  if (c === undefined) throw new TpmArgumentError(`unknown EK kind ${JSON.stringify(kind)}`);
  return c;
}

/** The TPM_ALG_ID of a bank name, or undefined for anything else (input may come from config). */
function bankAlg(bank: unknown): number | undefined {
  return typeof bank === 'string' && Object.hasOwn(BANK_ALG, bank) ? BANK_ALG[bank as PcrBank] : undefined;
}

function toNativeSelection(sel: readonly PcrSelection[]): NativePcrSel[] {
  if (!Array.isArray(sel) || sel.length === 0) throw new TpmArgumentError('PCR selection must be a non-empty array');
  const masks = new Map<PcrBank, number>();
  for (const s of sel as readonly PcrSelection[]) {
    const alg = bankAlg(s?.bank);
    if (alg === undefined) throw new TpmArgumentError(`unknown PCR bank ${JSON.stringify(s?.bank)}`);
    if (!Array.isArray(s.pcrs) || s.pcrs.length === 0) throw new TpmArgumentError(`PCR list of bank ${s.bank} is empty`);
    let mask = masks.get(s.bank) ?? 0;
    for (const p of s.pcrs) {
      if (!isInt(p, 0, 23)) throw new TpmArgumentError(`PCR index ${String(p)} in bank ${s.bank} is not in 0..23`);
      mask |= 1 << p;
    }
    masks.set(s.bank, mask >>> 0);
  }
  return [...masks].map(([bank, mask]) => [BANK_ALG[bank], mask]);
}

export class TpmDevice {
  readonly #native: NativeTpmDevice;
  readonly #tcti: string;
  readonly #o: TpmDeviceOptions;
  #closed = false;
  /** The connection broke: the next call after #retryAt reconnects first. */
  #broken = false;
  #retryAt = 0;
  #attempts = 0;
  #reconnecting: Promise<void> | undefined;

  private constructor(native: NativeTpmDevice, tcti: string, o: TpmDeviceOptions) {
    this.#native = native;
    this.#tcti = tcti;
    this.#o = o;
  }

  /**
   * Connects through the TCTI loader, e.g. `device:/dev/tpmrm0`, `tabrmd:`,
   * `swtpm:host=127.0.0.1,port=2321`. Rejects with TpmConnectionError when no
   * TPM answers there.
   */
  static async open(tcti: string, options: TpmDeviceOptions = {}): Promise<TpmDevice> {
    if (typeof tcti !== 'string' || tcti.length === 0 || tcti.length > 4096 || tcti.includes('\0')) {
      throw new TpmArgumentError('TCTI must be a non-empty string such as "device:/dev/tpmrm0"');
    }
    const native = new (nativeAddon().TpmDevice)(tcti);
    try {
      await native.connect();
    } catch (e) {
      await native.close().catch(() => undefined);
      throw fromNative(e);
    }
    return new TpmDevice(native, tcti, options);
  }

  /** The TCTI configuration this device was opened with. */
  get tcti(): string {
    return this.#tcti;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the connection is broken and not reopened yet. */
  get connectionLost(): boolean {
    return this.#broken;
  }

  async #call<T>(fn: (n: NativeTpmDevice) => Promise<T>): Promise<T> {
    if (this.#closed) throw new TpmDeviceClosedError(`the TPM device on ${this.#tcti} is closed`);
    if (this.#broken) await this.#reconnect();
    try {
      return await fn(this.#native);
    } catch (e) {
      const err = fromNative(e);
      if (brokeConnection(e) && !this.#broken && !this.#closed) {
        this.#broken = true;
        this.#attempts = 0;
        this.#retryAt = Date.now();
        this.#emit({ event: 'connection-lost', tcti: this.#tcti, attempt: 0, error: err, retryInMs: 0 });
      }
      throw err;
    }
  }

  #emit(e: TpmFaultEvent): void {
    try {
      this.#o.onFault?.(e);
    } catch {
      // a failing listener must not change what the TPM call returns
    }
  }

  /** The delay after the n-th failed reconnection (1-based): initial, doubling, capped. */
  #delay(n: number): number {
    const initial = this.#o.reconnectBackoff?.initialMs ?? 250;
    const max = Math.max(initial, this.#o.reconnectBackoff?.maxMs ?? 10_000);
    return Math.min(max, initial * 2 ** Math.min(n - 1, 30));
  }

  /** One reconnection at a time; before #retryAt, calls fail fast instead of hammering the TCTI. */
  #reconnect(): Promise<void> {
    this.#reconnecting ??= (async () => {
      const wait = this.#retryAt - Date.now();
      if (wait > 0) {
        throw new TpmConnectionError(this.#tcti, 0, `the connection to the TPM on ${this.#tcti} is lost; next reconnection attempt in ${wait} ms`, { lost: true, retryInMs: wait });
      }
      this.#attempts++;
      try {
        await this.#native.reconnect();
      } catch (e) {
        const err = fromNative(e);
        if (err instanceof TpmDeviceClosedError) throw err;
        const delay = this.#delay(this.#attempts);
        this.#retryAt = Date.now() + delay;
        this.#emit({ event: 'reconnect-failed', tcti: this.#tcti, attempt: this.#attempts, error: err, retryInMs: delay });
        throw err instanceof TpmConnectionError ? new TpmConnectionError(err.tcti, err.rc, err.message, { lost: true, retryInMs: delay }) : err;
      }
      this.#broken = false;
      this.#emit({ event: 'reconnected', tcti: this.#tcti, attempt: this.#attempts });
      this.#attempts = 0;
    })().finally(() => (this.#reconnecting = undefined));
    return this.#reconnecting;
  }

  #akId(ak: AkHandle | AgentKeyHandle): number {
    const st = akState.get(ak);
    if (!st || st.device !== this) throw new TpmStaleHandleError('the key handle does not belong to this TPM device');
    return st.id;
  }

  #makeAgentKey(id: number, name: Buffer, pub: Buffer, persistentHandle: number | undefined): AgentKeyHandle {
    const h: AgentKeyHandle = Object.freeze({ kind: 'agent-key' as const, name, public: pub, persistentHandle });
    akState.set(h, { device: this, id });
    return h;
  }

  #makeAk(id: number, name: Buffer, persistentHandle: number | undefined): AkHandle {
    const h: AkHandle = Object.freeze({ name, persistentHandle });
    akState.set(h, { device: this, id });
    return h;
  }

  /** `count` bytes from the TPM's RNG (several TPM2_GetRandom calls when needed). */
  async getRandom(count: number): Promise<Buffer> {
    if (!isInt(count, 0, MAX_RANDOM_BYTES)) throw new TpmArgumentError(`byte count must be an integer in 0..${MAX_RANDOM_BYTES}`);
    return this.#call((n) => n.getRandom(count));
  }

  /** Reads every selected PCR (TPM2_PCR_Read returns 8 per call; this loops, consistently). */
  async pcrRead(sel: readonly PcrSelection[]): Promise<PcrValues> {
    const nsel = toNativeSelection(sel);
    const rows = await this.#call((n) => n.pcrRead(nsel));
    const out: PcrValues = new Map();
    for (const [alg] of nsel) out.set(ALG_BANK.get(alg)!, new Map());
    for (const r of rows.slice().sort((a, b) => a.pcr - b.pcr)) {
      const bank = ALG_BANK.get(r.alg);
      if (bank) out.get(bank)?.set(r.pcr, r.digest);
    }
    return out;
  }

  /** TPM2_PCR_Extend of one PCR with one digest per bank given (each of the bank's size). */
  async pcrExtend(pcr: number, digests: Partial<Record<PcrBank, Buffer>>): Promise<void> {
    if (!isInt(pcr, 0, 23)) throw new TpmArgumentError(`PCR index ${String(pcr)} is not in 0..23`);
    const list: [number, Buffer][] = [];
    for (const [bank, d] of Object.entries(digests ?? {})) {
      const alg = bankAlg(bank);
      if (alg === undefined) throw new TpmArgumentError(`unknown PCR bank ${JSON.stringify(bank)}`);
      if (d === undefined) continue;
      if (!Buffer.isBuffer(d) || d.length !== BANK_SIZE[bank as PcrBank]) {
        throw new TpmArgumentError(`the ${bank} digest must be a Buffer of ${BANK_SIZE[bank as PcrBank]} bytes`);
      }
      list.push([alg, d]);
    }
    if (list.length === 0) throw new TpmArgumentError('pcrExtend needs at least one digest');
    await this.#call((n) => n.pcrExtend(pcr, list));
  }

  /**
   * The EK's public area, TPMT_PUBLIC bytes: the persistent EK when its public
   * area matches the default template, else the key CreatePrimary derives
   * from the template (the one the EK certificate certifies).
   */
  async ekPublic(kind: EkKind): Promise<Buffer> {
    const k = ekCode(kind);
    return this.#call((n) => n.ekPublic(k));
  }

  /**
   * The whole contents of an NV index (TPM2_NV_Read in chunks of the TPM's
   * NV buffer size), or undefined when the index is not defined or never written.
   * EK certificates come back as stored: DER, possibly followed by padding.
   */
  async readNv(index: number): Promise<Buffer | undefined> {
    if (!isInt(index, 0x01000000, 0x01ffffff)) throw new TpmArgumentError('NV index must be in 0x01000000..0x01ffffff');
    return this.#call((n) => n.readNv(index));
  }

  /** Reads the EK certificate's NV index for this EK kind (raw bytes, see readNv). */
  async ekCertificate(kind: EkKind): Promise<Buffer | undefined> {
    ekCode(kind);
    return this.readNv(EK_CERT_NV_INDEX[kind]);
  }

  /** Creates an AK under the EK (TPM2_Create); load it with loadAk(). */
  async createAk(ek: EkKind, kind: AkKind): Promise<AkBlobs> {
    const e = ekCode(ek);
    const a = typeof kind === 'string' && Object.hasOwn(AK_CODE, kind) ? AK_CODE[kind] : undefined;
    if (a === undefined) throw new TpmArgumentError(`unknown AK kind ${JSON.stringify(kind)}`);
    const r = await this.#call((n) => n.createAk(e, a));
    return { public: r.public, private: r.private };
  }

  /** Loads saved AK blobs under the same EK (TPM2_Load). The AK stays loaded until flush(). */
  async loadAk(ek: EkKind, blobs: AkBlobs): Promise<AkHandle> {
    const e = ekCode(ek);
    checkBuffer(blobs?.public, 'AK public', 1024);
    checkBuffer(blobs?.private, 'AK private', 1024);
    const r = await this.#call((n) => n.loadAk(e, blobs.public, blobs.private));
    return this.#makeAk(r.id, r.name, undefined);
  }

  /** Makes a loaded AK or agent key persistent at `persistentHandle` (TPM2_EvictControl, empty owner auth). */
  async persistAk(ak: AkHandle | AgentKeyHandle, persistentHandle: number): Promise<void> {
    const id = this.#akId(ak);
    if (!isInt(persistentHandle, 0x81000000, 0x81ffffff)) throw new TpmArgumentError('persistent handle must be in 0x81000000..0x81ffffff');
    await this.#call((n) => n.persistAk(id, persistentHandle));
  }

  /** An AK already persistent in the TPM; TpmObjectError when absent or not a restricted signing key. */
  async akFromPersistent(persistentHandle: number): Promise<AkHandle & { readonly public: Buffer }> {
    if (!isInt(persistentHandle, 0x81000000, 0x81ffffff)) throw new TpmArgumentError('persistent handle must be in 0x81000000..0x81ffffff');
    const r = await this.#call((n) => n.akFromPersistent(persistentHandle));
    const h = Object.freeze({ name: r.name, persistentHandle, public: r.public });
    akState.set(h, { device: this, id: r.id });
    return h;
  }

  /** Creates an agent key under the EK (TPM2_Create); load it with loadAgentKey(). */
  async createAgentKey(ek: EkKind): Promise<AgentKeyBlobs> {
    const e = ekCode(ek);
    const r = await this.#call((n) => n.createAgentKey(e));
    return { public: r.public, private: r.private };
  }

  /** Loads saved agent-key blobs under the same EK; TpmObjectError when they are not an agent key. */
  async loadAgentKey(ek: EkKind, blobs: AgentKeyBlobs): Promise<AgentKeyHandle> {
    const e = ekCode(ek);
    checkBuffer(blobs?.public, 'agent key public', 1024);
    checkBuffer(blobs?.private, 'agent key private', 1024);
    const r = await this.#call((n) => n.loadAgentKey(e, blobs.public, blobs.private));
    return this.#makeAgentKey(r.id, r.name, blobs.public, undefined);
  }

  /** An agent key persistent in the TPM; TpmObjectError when absent or not an unrestricted fixedTPM signing key. */
  async agentKeyFromPersistent(persistentHandle: number): Promise<AgentKeyHandle> {
    if (!isInt(persistentHandle, 0x81000000, 0x81ffffff)) throw new TpmArgumentError('persistent handle must be in 0x81000000..0x81ffffff');
    const r = await this.#call((n) => n.agentKeyFromPersistent(persistentHandle));
    return this.#makeAgentKey(r.id, r.name, r.public, persistentHandle);
  }

  /**
   * TPM2_Certify of a loaded key by an AK, `nonce` as qualifyingData: the
   * AK's signature over the key's name proves the key lives in this TPM.
   */
  async certify(key: AgentKeyHandle, ak: AkHandle, nonce: Buffer): Promise<QuoteResult> {
    const k = this.#akId(key);
    const a = this.#akId(ak);
    if (!Buffer.isBuffer(nonce) || nonce.length > MAX_NONCE_BYTES) throw new TpmArgumentError(`nonce must be a Buffer of at most ${MAX_NONCE_BYTES} bytes`);
    const r = await this.#call((n) => n.certify(k, a, nonce));
    return { attest: r.attest, signature: r.signature };
  }

  /** TPM2_Sign of a SHA-256 digest with the agent key: a TPMT_SIGNATURE (ECDSA r, s). */
  async sign(key: AgentKeyHandle, digest: Buffer): Promise<Buffer> {
    const k = this.#akId(key);
    if (!Buffer.isBuffer(digest) || digest.length !== 32) throw new TpmArgumentError('digest must be a SHA-256 digest (32 bytes)');
    return this.#call((n) => n.sign(k, digest));
  }

  /** Removes a persistent object (not the EKs); handles reached through it become stale. */
  async evictPersistent(persistentHandle: number): Promise<void> {
    if (!isInt(persistentHandle, 0x81000000, 0x81ffffff)) throw new TpmArgumentError('persistent handle must be in 0x81000000..0x81ffffff');
    await this.#call((n) => n.evictPersistent(persistentHandle));
  }

  /** TPM2_Quote with the AK's own scheme over the selected PCRs, nonce as qualifyingData. */
  async quote(ak: AkHandle, sel: readonly PcrSelection[], nonce: Buffer): Promise<QuoteResult> {
    const id = this.#akId(ak);
    const nsel = toNativeSelection(sel);
    if (!Buffer.isBuffer(nonce) || nonce.length > MAX_NONCE_BYTES) throw new TpmArgumentError(`nonce must be a Buffer of at most ${MAX_NONCE_BYTES} bytes`);
    const r = await this.#call((n) => n.quote(id, nsel, nonce));
    return { attest: r.attest, signature: r.signature };
  }

  /**
   * TPM2_ActivateCredential: proves the AK and the EK live in this TPM and
   * returns the secret (certInfo). `credentialBlob` is the TPM2B_ID_OBJECT
   * contents and `encryptedSecret` the TPM2B_ENCRYPTED_SECRET contents, both
   * WITHOUT their u16 size prefix. A credential made for another AK name or
   * EK fails with TpmError.
   */
  async activateCredential(ak: AkHandle, ek: EkKind, credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer> {
    const id = this.#akId(ak);
    const e = ekCode(ek);
    checkBuffer(credentialBlob, 'credentialBlob', 130);
    checkBuffer(encryptedSecret, 'encryptedSecret', 512);
    return this.#call((n) => n.activateCredential(id, e, credentialBlob, encryptedSecret));
  }

  /** Unloads the AK or agent key (a persistent one stays in the TPM; only this reference goes). */
  async flush(ak: AkHandle | AgentKeyHandle): Promise<void> {
    const id = this.#akId(ak);
    await this.#call((n) => n.flushAk(id));
  }

  /** What is loaded in the TPM now (TPM2_GetCapability): for diagnostics and leak checks. */
  async loadedHandles(): Promise<{ transient: number[]; sessions: number[] }> {
    return this.#call((n) => n.loadedHandles());
  }

  /** Flushes every AK this device loaded, then closes ESAPI and the TCTI. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#native.close();
    } catch (e) {
      throw fromNative(e);
    }
  }
}
