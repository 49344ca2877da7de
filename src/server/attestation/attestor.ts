/**
 * Server side of TPM node attestation (DESIGN.md "Node attestation"), pure
 * over what is injected: `begin` admits the EK and the AK and returns the
 * challenge; `complete` checks the answer and, only once every check has
 * passed, issues the agent SVID and records the node. Renewal repeats the
 * quote with the AK the node attested with.
 *
 * A refusal writes nothing but its audit line. The one store write a refusal
 * may leave is the nonce being spent: every answer spends its challenge, so a
 * challenge can never be answered twice.
 */
import { EK_SELECTOR_PREFIXES } from '../../policy/index.js';
import { X509Certificate, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  AgentKeyPublicError,
  AkPublicError,
  CertifyVerificationError,
  EkCertificateError,
  checkAgentKeyPublic,
  publicKeyFromTpmtPublic,
  verifyCertify,
  QuoteVerificationError,
  checkAkPublic,
  ekCertificateMatches,
  ekPublicHash,
  makeCredential,
  objectName,
  parseTpmtPublic,
  unwrapEkCertificate,
  verifyEkCertificate,
  verifyQuote,
  TPM_ALG,
  type TpmsClockInfo,
  type TpmtPublic,
  type TpmlPcrSelection,
} from '../../tpm/index.js';
import { EventLogParseError, EventLogReplayError, parseEventLog, verifyReplay, type EventLog } from '../../tpm/eventlog/index.js';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { bundleX509Der } from '../../spiffe/index.js';
import { CsrError, parseCsr, type ParsedCsr } from '../ca/index.js';
import { ConflictError, NodeBannedError, NodeNotActiveError, NotFoundError, parseSelector, formatSelector, type AttestedNode, type Datastore } from '../store/index.js';
import type { AuditLog } from '../../log/index.js';
import { AttestationError, type AttestationReason } from './errors.js';
import type {
  AgentSvidIssuer,
  AttestParams,
  AttestationResult,
  Challenge,
  ChallengeResponse,
  EkAdmission,
  MeasurementPolicy,
  PcrBank,
  PendingAttestation,
  PendingCheck,
  PendingRenewal,
} from './types.js';

/** Bounds on what an agent may send: a real TPM's structures are far smaller. */
export const LIMITS = {
  publicArea: 1024,
  ekCertificate: 8 * 1024,
  csr: 16 * 1024,
  secret: 64,
  quote: 1024,
  signature: 1024,
  pcrValueBanks: 4,
} as const;

const SECRET_BYTES = 32;
const NONCE_BYTES = 32;
const AGENT_PATH_PREFIX = '/keel/agent/tpm/';
const BANK_ALG: Readonly<Record<PcrBank, number>> = { sha1: TPM_ALG.SHA1, sha256: TPM_ALG.SHA256, sha384: TPM_ALG.SHA384 };

export interface AttestorOptions {
  readonly trustDomain: TrustDomain;
  readonly store: Datastore;
  readonly ca: AgentSvidIssuer;
  readonly ekAdmission: EkAdmission;
  readonly policy: MeasurementPolicy;
  /** The PCRs every quote must cover. */
  readonly pcrSelection: { readonly bank: PcrBank; readonly pcrs: readonly number[] };
  readonly nonceTtlSeconds: number;
  readonly agentSvidTtlSeconds: number;
  readonly maxEventLogBytes: number;
  readonly audit: AuditLog;
  readonly now?: () => Date;
  readonly random?: (bytes: number) => Buffer;
  /** Event logs kept for continuous attestation (agents send only a hash while theirs is unchanged); default 1024 nodes. */
  readonly eventLogCacheSize?: number;
}

const fail = (reason: AttestationReason, detail: string, cause?: unknown): never => {
  throw new AttestationError(reason, detail, cause === undefined ? undefined : { cause });
};

function bytesOf(v: unknown, field: string, max: number, opts: { optional?: boolean } = {}): Buffer {
  if (v === undefined || v === null || (v instanceof Uint8Array && v.length === 0)) {
    if (opts.optional) return Buffer.alloc(0);
    return fail('malformed', `${field} is missing`);
  }
  if (!(v instanceof Uint8Array)) return fail('malformed', `${field} is not bytes`);
  if (v.length > max) return fail('too-large', `${field} is ${v.length} bytes, limit ${max}`);
  return Buffer.from(v.buffer, v.byteOffset, v.length);
}

/** Runs a TPM check, turning its own error type into a refusal for `reason` (other errors pass through). */
function refuseAs<T>(reason: AttestationReason, type: abstract new (...args: never[]) => Error, check: () => T): T {
  try {
    return check();
  } catch (e) {
    if (e instanceof type) return fail(reason, e.message, e);
    throw e;
  }
}

function parsePublic(bytes: Buffer, field: string): TpmtPublic {
  try {
    return parseTpmtPublic(bytes);
  } catch (e) {
    return fail('malformed', `${field}: ${(e as Error).message}`, e);
  }
}

function checkCsr(bytes: Buffer): ParsedCsr {
  try {
    return parseCsr(bytes);
  } catch (e) {
    if (e instanceof CsrError) return fail(e.reason === 'too-large' ? 'too-large' : 'csr-invalid', e.message, e);
    throw e;
  }
}

const QUOTE_REASONS: Readonly<Record<QuoteVerificationError['reason'], AttestationReason>> = {
  malformed: 'malformed',
  magic: 'quote-signature',
  type: 'quote-signature',
  scheme: 'quote-signature',
  signature: 'quote-signature',
  nonce: 'quote-nonce',
  selection: 'quote-selection',
  'pcr-values': 'pcr-digest',
  'pcr-digest': 'pcr-digest',
  'clock-rollback': 'clock-rollback',
};

/** The agent key the CSR must be for: parsed, checked, and the CSR's key compared. */
function checkAgentKey(bytes: Buffer, csr: ParsedCsr): TpmtPublic {
  const pub = parsePublic(bytes, 'agent_key_public');
  refuseAs('agent-key-invalid', AgentKeyPublicError, () => checkAgentKeyPublic(pub));
  const spki = publicKeyFromTpmtPublic(pub).export({ type: 'spki', format: 'der' });
  if (!spki.equals(csr.spkiDer)) fail('agent-key-invalid', 'the CSR is not for the agent key: the agent SVID certifies only the TPM-resident key');
  return pub;
}

/** The AK's TPM2_Certify of the agent key over the nonce. */
function checkAgentKeyCertified(akPublic: TpmtPublic, keyPublic: TpmtPublic, nonce: Buffer, response: ChallengeResponse): void {
  const attest = bytesOf(response?.agentKeyCertify, 'agent_key_certify', LIMITS.quote, { optional: true });
  const signature = bytesOf(response.agentKeyCertifySignature, 'agent_key_certify_signature', LIMITS.signature, { optional: true });
  if (attest.length === 0 || signature.length === 0) fail('agent-key-certify', "no certification of the agent key by the AK: the key is not shown to live in the node's TPM");
  refuseAs('agent-key-certify', CertifyVerificationError, () => verifyCertify({ akPublic, attest, signature, nonce, objectPublic: keyPublic }));
}

function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function isSelfSigned(c: X509Certificate): boolean {
  return c.checkIssued(c) && c.verify(c.publicKey);
}

export class Attestor {
  readonly trustDomain: TrustDomain;
  readonly #o: AttestorOptions;
  readonly #now: () => Date;
  readonly #random: (n: number) => Buffer;
  readonly #roots: X509Certificate[];
  readonly #intermediates: X509Certificate[];
  readonly #selection: TpmlPcrSelection;
  readonly #eventLogs = new Map<string, { readonly sha256: string; readonly bytes: Buffer }>();

  constructor(options: AttestorOptions) {
    const pcrs = [...new Set(options.pcrSelection.pcrs)].sort((a, b) => a - b);
    if (pcrs.length === 0 || pcrs.some((p) => !Number.isInteger(p) || p < 0 || p > 23)) {
      throw new RangeError('pcrSelection.pcrs must be PCR indices 0..23, at least one');
    }
    if (!(options.pcrSelection.bank in BANK_ALG)) throw new RangeError(`unknown PCR bank ${String(options.pcrSelection.bank)}`);
    if (options.ekAdmission.manufacturerCas.length === 0 && options.ekAdmission.allowList.size === 0) {
      throw new RangeError('EK admission needs manufacturer CAs or an allow-list (or both)');
    }
    this.#o = { ...options, pcrSelection: { bank: options.pcrSelection.bank, pcrs } };
    this.trustDomain = options.trustDomain;
    this.#now = options.now ?? (() => new Date());
    this.#random = options.random ?? randomBytes;
    this.#roots = options.ekAdmission.manufacturerCas.filter(isSelfSigned);
    this.#intermediates = options.ekAdmission.manufacturerCas.filter((c) => !isSelfSigned(c));
    this.#selection = [{ hashAlg: BANK_ALG[options.pcrSelection.bank], pcrs }];
  }

  /** `spiffe://<td>/keel/agent/tpm/<ek hash>`. */
  agentIdFor(ekHash: string): SpiffeId {
    return this.trustDomain.child(AGENT_PATH_PREFIX + ekHash);
  }

  /** The EK hash an agent ID names, or undefined when it is not an agent ID of this trust domain. */
  ekHashOfAgentId(id: SpiffeId): string | undefined {
    if (!id.memberOf(this.trustDomain) || !id.path.startsWith(AGENT_PATH_PREFIX)) return undefined;
    const h = id.path.slice(AGENT_PATH_PREFIX.length);
    return /^[0-9a-f]{64}$/.test(h) ? h : undefined;
  }

  get pcrSelection(): { readonly bank: PcrBank; readonly pcrs: readonly number[] } {
    return this.#o.pcrSelection;
  }

  // ── attestation ───────────────────────────────────────────────────────────

  /** Admits the EK and the AK and makes the challenge. Throws AttestationError (audited). */
  async begin(params: AttestParams, peer?: string): Promise<{ challenge: Challenge; state: PendingAttestation }> {
    let ekHash: string | undefined;
    try {
      const ekBytes = bytesOf(params?.ekPublic, 'ek_public', LIMITS.publicArea);
      const certBytes = bytesOf(params.ekCertificate, 'ek_certificate', LIMITS.ekCertificate, { optional: true });
      const akBytes = bytesOf(params.akPublic, 'ak_public', LIMITS.publicArea);
      const csrBytes = bytesOf(params.csr, 'csr', LIMITS.csr);
      const agentKeyBytes = bytesOf(params.agentKeyPublic, 'agent_key_public', LIMITS.publicArea);

      const ek = parsePublic(ekBytes, 'ek_public');
      try {
        ekHash = ekPublicHash(ek);
      } catch (e) {
        fail('malformed', `ek_public: ${(e as Error).message}`, e);
      }
      const hash = ekHash!;
      const admissionSelectors = [`tpm:ek-hash:${hash}`, ...this.#admitEk(ek, hash, certBytes)];
      await this.#refuseBanned(hash);

      const ak = parsePublic(akBytes, 'ak_public');
      refuseAs('ak-invalid', AkPublicError, () => checkAkPublic(ak));
      const csr = checkCsr(csrBytes);
      const agentKeyPublic = checkAgentKey(agentKeyBytes, csr);

      const akName = objectName(ak);
      const secret = this.#random(SECRET_BYTES);
      let credential;
      try {
        credential = makeCredential(ek, akName, secret);
      } catch (e) {
        return fail('malformed', `ek_public cannot protect a credential: ${(e as Error).message}`, e);
      }
      const nonceContext = `attest:${hash}`;
      const nonce = await this.#issueNonce(nonceContext);
      const state: PendingAttestation = {
        kind: 'attest',
        nonce,
        nonceContext,
        secret,
        agentId: this.agentIdFor(hash),
        ekHash: hash,
        akPublic: ak,
        akName,
        csr,
        agentKeyPublic,
        admissionSelectors,
        peer,
      };
      return { challenge: { ...credential, nonce, pcrSelection: [this.#o.pcrSelection] }, state };
    } catch (e) {
      throw this.#refused(e, { ekHash, peer });
    }
  }

  /** Checks the answer; issues the agent SVID and records the node only when every check passes. */
  async complete(state: PendingAttestation, response: ChallengeResponse): Promise<AttestationResult> {
    try {
      await this.#spendNonce(state.nonce, state.nonceContext);
      const secret = bytesOf(response?.secret, 'secret', LIMITS.secret);
      if (secret.length !== state.secret.length || !timingSafeEqual(secret, state.secret)) {
        fail('secret-mismatch', 'the activated credential is not the secret: the AK is not in the TPM that holds the EK');
      }
      const existing = await this.#store.getNodeByEkHash(state.ekHash);
      if (existing?.status.kind === 'banned') fail('banned', `node ${existing.agentId.toString()} is banned: ${existing.status.reason}`);
      const previous = existing ? clockOf(existing) : undefined;
      const measured = this.#checkMeasurements(state.akPublic, state.nonce, response, previous, state.agentId);
      checkAgentKeyCertified(state.akPublic, state.agentKeyPublic, state.nonce, response);
      const selectors = [...state.admissionSelectors, ...measured.selectors];

      const svid = await this.#issue(state.csr, state.agentId);
      try {
        await this.#store.recordAttestation({
          agentId: state.agentId,
          ekPublicHash: state.ekHash,
          akName: state.akName.toString('hex'),
          selectors: selectors.map(parseSelector),
          svid: { serial: svid.serial, notAfter: svid.expiresAt },
          quote: { clock: measured.clock.clock, resetCount: measured.clock.resetCount, restartCount: measured.clock.restartCount },
        });
      } catch (e) {
        if (e instanceof NodeBannedError) fail('banned', e.message, e);
        throw e;
      }
      this.#o.audit.record({
        event: 'node.attested',
        agentId: state.agentId.toString(),
        ekHash: state.ekHash,
        selectors: [...selectors],
        serial: svid.serial,
        notAfter: svid.expiresAt.toISOString(),
        ...(state.peer ? { peer: state.peer } : {}),
      });
      return { ...svid, selectors };
    } catch (e) {
      throw this.#refused(e, { ekHash: state?.ekHash, peer: state?.peer });
    }
  }

  // ── renewal ───────────────────────────────────────────────────────────────

  /**
   * Renewal, after the gRPC layer verified the agent's SVID (`agentId`,
   * `presentedSerial`): the node must be active with the same AK; the
   * challenge is a nonce only.
   */
  async beginRenewal(
    agent: { readonly agentId: SpiffeId; readonly presentedSerial: string },
    params: Pick<AttestParams, 'akPublic' | 'csr' | 'agentKeyPublic'>,
  ): Promise<{ challenge: Challenge; state: PendingRenewal; csr: ParsedCsr }> {
    const agentId = agent.agentId;
    try {
      const ekHash = this.ekHashOfAgentId(agentId);
      if (!ekHash) fail('unauthenticated', `${agentId.toString()} is not an agent ID of ${this.trustDomain.name}`);
      const node = await this.#store.getNode(agentId);
      if (!node) return fail('unknown-node', `no attested node ${agentId.toString()}`);
      const ak = this.#activeNodeAk(node, agent.presentedSerial, params?.akPublic);
      const csr = checkCsr(bytesOf(params.csr, 'csr', LIMITS.csr));
      const agentKeyPublic = checkAgentKey(bytesOf(params.agentKeyPublic, 'agent_key_public', LIMITS.publicArea), csr);
      const nonceContext = `renew:${agentId.toString()}`;
      const nonce = await this.#issueNonce(nonceContext);
      const state: PendingRenewal = {
        kind: 'renew',
        nonce,
        nonceContext,
        agentId,
        ekHash: ekHash!,
        akPublic: ak,
        presentedSerial: agent.presentedSerial.toLowerCase(),
        agentKeyPublic,
        previousClock: clockOf(node!),
        admissionSelectors: node!.selectors.map(formatSelector).filter(isAdmissionSelector),
      };
      return {
        challenge: { credentialBlob: Buffer.alloc(0), encryptedSecret: Buffer.alloc(0), nonce, pcrSelection: [this.#o.pcrSelection] },
        state,
        csr,
      };
    } catch (e) {
      throw this.#renewalRefused(e, agentId);
    }
  }

  async completeRenewal(state: PendingRenewal, csr: ParsedCsr, response: ChallengeResponse): Promise<AttestationResult> {
    try {
      await this.#spendNonce(state.nonce, state.nonceContext);
      const measured = this.#checkMeasurements(state.akPublic, state.nonce, response, state.previousClock, state.agentId);
      checkAgentKeyCertified(state.akPublic, state.agentKeyPublic, state.nonce, response);
      const selectors = [...state.admissionSelectors, ...measured.selectors];
      const svid = await this.#issue(csr, state.agentId);
      try {
        await this.#store.renewNode(state.agentId, {
          svid: { serial: svid.serial, notAfter: svid.expiresAt },
          quote: { clock: measured.clock.clock, resetCount: measured.clock.resetCount, restartCount: measured.clock.restartCount },
          selectors: selectors.map(parseSelector),
          ifSvidSerial: state.presentedSerial,
        });
      } catch (e) {
        if (e instanceof NodeBannedError) fail('banned', e.message, e);
        if (e instanceof NodeNotActiveError || e instanceof NotFoundError) fail('not-active', e.message, e);
        if (e instanceof ConflictError) fail('not-active', 'the SVID presented was renewed meanwhile', e);
        throw e;
      }
      this.#o.audit.record({ event: 'node.renewed', agentId: state.agentId.toString(), serial: svid.serial, notAfter: svid.expiresAt.toISOString() });
      return { ...svid, selectors };
    } catch (e) {
      throw this.#renewalRefused(e, state?.agentId);
    }
  }

  // ── continuous attestation ─────────────────────────────────────────────────

  /**
   * A fresh quote from an active node between renewals (on its bound
   * connection): nothing is issued; a node out of policy is marked drifted.
   */
  async beginCheck(agent: { readonly agentId: SpiffeId; readonly presentedSerial: string }, params: Pick<AttestParams, 'akPublic'>): Promise<{ challenge: Challenge; state: PendingCheck }> {
    const agentId = agent.agentId;
    try {
      if (!this.ekHashOfAgentId(agentId)) fail('unauthenticated', `${agentId.toString()} is not an agent ID of ${this.trustDomain.name}`);
      const node = await this.#store.getNode(agentId);
      const ak = this.#activeNodeAk(node, agent.presentedSerial, params?.akPublic);
      const nonceContext = `check:${agentId.toString()}`;
      const nonce = await this.#issueNonce(nonceContext);
      const state: PendingCheck = { kind: 'check', nonce, nonceContext, agentId, akPublic: ak, presentedSerial: agent.presentedSerial.toLowerCase(), previousClock: clockOf(node!) };
      return { challenge: { credentialBlob: Buffer.alloc(0), encryptedSecret: Buffer.alloc(0), nonce, pcrSelection: [this.#o.pcrSelection] }, state };
    } catch (e) {
      throw this.#checkRefused(e, agentId);
    }
  }

  /** Verifies the answer. Out of policy: the node is marked drifted (audited) and the refusal says why. */
  async completeCheck(state: PendingCheck, response: ChallengeResponse): Promise<{ selectors: readonly string[] }> {
    try {
      await this.#spendNonce(state.nonce, state.nonceContext);
      let measured;
      try {
        measured = this.#checkMeasurements(state.akPublic, state.nonce, response, state.previousClock, state.agentId);
      } catch (e) {
        if (e instanceof AttestationError && (e.reason === 'policy' || e.reason === 'eventlog-replay' || e.reason === 'pcr-digest' || e.reason === 'clock-rollback')) {
          await this.#drifted(state, e);
        }
        throw e;
      }
      this.#o.audit.record({ event: 'node.checked', agentId: state.agentId.toString(), selectors: [...measured.selectors] });
      return { selectors: measured.selectors };
    } catch (e) {
      throw this.#checkRefused(e, state?.agentId);
    }
  }

  async #drifted(state: PendingCheck, e: AttestationError): Promise<void> {
    const reason = `${e.reason}: ${e.detail}`.slice(0, 4000);
    try {
      await this.#store.markNodeDrifted(state.agentId, reason, { ifSvidSerial: state.presentedSerial });
      this.#o.audit.record({ event: 'node.drifted', agentId: state.agentId.toString(), reason: e.reason, detail: e.detail });
    } catch (err) {
      // Renewed, evicted or banned meanwhile: that state stands; the refusal is still returned.
      if (!(err instanceof ConflictError || err instanceof NodeNotActiveError || err instanceof NodeBannedError || err instanceof NotFoundError)) throw err;
    }
  }

  #checkRefused(e: unknown, agentId: SpiffeId | undefined): AttestationError {
    const err = asAttestationError(e);
    this.#o.audit.record({ event: 'node.check_refused', agentId: agentId?.toString() ?? '', reason: err.reason, detail: err.detail });
    return err;
  }

  // ── the checks ────────────────────────────────────────────────────────────

  /** The node must be active, hold exactly the SVID presented, and quote with the AK it attested with. */
  #activeNodeAk(node: AttestedNode | undefined, presentedSerial: string, akPublic: Uint8Array | undefined): TpmtPublic {
    if (!node) return fail('unknown-node', 'no attested node with this agent ID');
    if (node.status.kind === 'banned') fail('banned', `node is banned: ${node.status.reason}`);
    if (node.status.kind === 'drifted') fail('not-active', `the node drifted out of policy (${node.status.reason}); it must attest again`);
    if (node.status.kind !== 'active') return fail('not-active', 'the node was evicted; it must attest again');
    if (node.status.svid.serial !== presentedSerial.toLowerCase()) fail('superseded', 'the agent SVID presented was replaced; only the latest one is accepted');
    const ak = parsePublic(bytesOf(akPublic, 'ak_public', LIMITS.publicArea), 'ak_public');
    if (node.akName === undefined || objectName(ak).toString('hex') !== node.akName) fail('ak-changed', 'the AK is not the one the node attested with');
    return ak;
  }

  get #store(): Datastore {
    return this.#o.store;
  }

  /** EK certificate chain and match, else the allow-list. Returns the selectors the admission earned. */
  #admitEk(ek: TpmtPublic, ekHash: string, certNv: Buffer): string[] {
    const allowed = this.#o.ekAdmission.allowList.has(ekHash);
    if (certNv.length === 0 || this.#roots.length === 0) {
      if (allowed) return [];
      return fail('ek-not-allowed', certNv.length === 0 ? 'no EK certificate was sent and the EK is not on the allow-list' : 'the EK is not on the allow-list (no manufacturer CA is configured)');
    }
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(unwrapEkCertificate(certNv));
    } catch (e) {
      return fail('malformed', `ek_certificate: ${(e as Error).message}`, e);
    }
    let anchor: X509Certificate | undefined;
    try {
      const verified = verifyEkCertificate(cert, { roots: this.#roots, intermediates: this.#intermediates, now: this.#now() });
      anchor = verified.chain[verified.chain.length - 1];
    } catch (e) {
      if (!(e instanceof EkCertificateError)) throw e;
      if (!allowed) fail('ek-untrusted', e.message, e);
    }
    // A certificate that names another key is refused even for an allow-listed EK: someone is lying.
    if (!ekCertificateMatches(cert, ek)) fail('ek-cert-mismatch', 'the EK certificate certifies another public key than ek_public');
    return anchor ? [`tpm:ek-ca:${sha256Hex(anchor.raw)}`] : [];
  }

  async #refuseBanned(ekHash: string): Promise<void> {
    const node = await this.#store.getNodeByEkHash(ekHash);
    if (node?.status.kind === 'banned') fail('banned', `node ${node.agentId.toString()} is banned: ${node.status.reason}`);
  }

  async #issueNonce(context: string): Promise<Buffer> {
    const nonce = this.#random(NONCE_BYTES);
    const expiresAt = new Date(this.#now().getTime() + this.#o.nonceTtlSeconds * 1000);
    await this.#store.issueNonce(nonce.toString('hex'), expiresAt, context);
    return nonce;
  }

  async #spendNonce(nonce: Buffer, context: string): Promise<void> {
    const r = await this.#store.consumeNonce(nonce.toString('hex'), this.#now());
    switch (r.kind) {
      case 'consumed':
        if (r.context !== context) fail('nonce-unknown', 'the nonce was issued for another exchange');
        return;
      case 'unknown':
        return fail('nonce-unknown', 'the nonce was never issued');
      case 'used':
        return fail('nonce-used', `the challenge was answered already (${r.usedAt.toISOString()})`);
      case 'expired':
        return fail('nonce-expired', `the challenge expired at ${r.expiredAt.toISOString()}`);
    }
  }

  /** Quote, PCR values, event log, policy: the measured state of the node. */
  #checkMeasurements(
    akPublic: TpmtPublic,
    nonce: Buffer,
    response: ChallengeResponse,
    previous: TpmsClockInfo | undefined,
    agentId: SpiffeId,
  ): { selectors: string[]; clock: TpmsClockInfo } {
    const quote = bytesOf(response?.quote, 'quote', LIMITS.quote);
    const signature = bytesOf(response.quoteSignature, 'quote_signature', LIMITS.signature);
    const eventLogBytes = this.#eventLogOf(agentId, response);
    const { bank, pcrs } = this.#o.pcrSelection;
    const values = this.#pcrValues(response.pcrValues);

    let clock: TpmsClockInfo;
    try {
      clock = verifyQuote({
        akPublic,
        attest: quote,
        signature,
        nonce,
        expectedSelection: this.#selection,
        // A missing value stays empty and fails verifyQuote's size check (pcr-digest).
        pcrValues: pcrs.map((p) => values.get(p) ?? Buffer.alloc(0)),
        ...(previous ? { previous } : {}),
      }).clockInfo;
    } catch (e) {
      if (e instanceof QuoteVerificationError) return fail(QUOTE_REASONS[e.reason], e.message, e);
      throw e;
    }

    let eventLog: EventLog | undefined;
    if (eventLogBytes.length > 0) {
      try {
        eventLog = parseEventLog(eventLogBytes, { limits: { maxLogBytes: this.#o.maxEventLogBytes } });
        verifyReplay(eventLog, bank, values);
      } catch (e) {
        if (e instanceof EventLogParseError) fail('malformed', e.message, e);
        if (e instanceof EventLogReplayError) fail('eventlog-replay', e.message, e);
        throw e;
      }
    }
    const verdict = this.#o.policy.evaluate({ bank, pcrs: values, ...(eventLog ? { eventLog } : {}) });
    if (!verdict.ok) return fail('policy', verdict.detail);
    this.#rememberEventLog(agentId, eventLogBytes);
    return { selectors: [...verdict.selectors], clock };
  }

  /** The log sent, or the copy kept from the node's last verified one when it sent only its hash. */
  #eventLogOf(agentId: SpiffeId, response: ChallengeResponse): Buffer {
    const sent = bytesOf(response?.eventLog, 'event_log', this.#o.maxEventLogBytes, { optional: true });
    const hash = bytesOf(response?.eventLogSha256, 'event_log_sha256', 32, { optional: true });
    if (sent.length > 0 || hash.length === 0) return sent;
    const kept = this.#eventLogs.get(agentId.toString());
    if (!kept || kept.sha256 !== hash.toString('hex')) fail('eventlog-required', 'the server holds no copy of that event log: send it whole');
    return kept!.bytes;
  }

  #rememberEventLog(agentId: SpiffeId, bytes: Buffer): void {
    const key = agentId.toString();
    this.#eventLogs.delete(key);
    if (bytes.length === 0) return;
    this.#eventLogs.set(key, { sha256: createHash('sha256').update(bytes).digest('hex'), bytes: Buffer.from(bytes) });
    const max = this.#o.eventLogCacheSize ?? 1024;
    // Map order is insertion order: the first key is the least recently verified.
    while (this.#eventLogs.size > max) this.#eventLogs.delete(this.#eventLogs.keys().next().value!);
  }

  /** The reported values of the configured bank, exactly the selected PCRs. */
  #pcrValues(reported: ChallengeResponse['pcrValues']): Map<number, Buffer> {
    if (!Array.isArray(reported)) return fail('malformed', 'pcr_values is not a list');
    if (reported.length > LIMITS.pcrValueBanks) fail('too-large', `pcr_values has ${reported.length} banks`);
    const { bank, pcrs } = this.#o.pcrSelection;
    const wanted = new Set(pcrs);
    const out = new Map<number, Buffer>();
    for (const b of reported) {
      if (b?.bank !== bank) fail('pcr-digest', `values for bank ${JSON.stringify(String(b?.bank))}, which was not asked for`);
      for (const [index, value] of b.values) {
        if (!wanted.has(index)) fail('pcr-digest', `a value for PCR ${index}, which was not asked for`);
        if (out.has(index)) fail('malformed', `two values for PCR ${index}`);
        out.set(index, bytesOf(value, `pcr_values[${index}]`, 64));
      }
    }
    return out;
  }

  async #issue(csr: ParsedCsr, agentId: SpiffeId): Promise<Omit<AttestationResult, 'selectors'>> {
    const issued = await this.#o.ca.issueX509Svid({ csr, spiffeId: agentId, ttlSeconds: this.#o.agentSvidTtlSeconds });
    return {
      spiffeId: issued.spiffeId,
      svidChain: [issued.certDer, ...issued.chainDer],
      bundle: bundleX509Der(this.#o.ca.bundle()),
      expiresAt: issued.notAfter,
      serial: issued.serial.toLowerCase(),
    };
  }

  // ── refusals ──────────────────────────────────────────────────────────────

  #refused(e: unknown, who: { ekHash: string | undefined; peer: string | undefined }): AttestationError {
    const err = asAttestationError(e);
    this.#o.audit.record({
      event: 'node.attestation_refused',
      reason: err.reason,
      detail: err.detail,
      ...(who.ekHash ? { ekHash: who.ekHash } : {}),
      ...(who.peer ? { peer: who.peer } : {}),
    });
    return err;
  }

  #renewalRefused(e: unknown, agentId: SpiffeId | undefined): AttestationError {
    const err = asAttestationError(e);
    this.#o.audit.record({ event: 'node.renewal_refused', agentId: agentId?.toString() ?? '', reason: err.reason, detail: err.detail });
    return err;
  }
}

function asAttestationError(e: unknown): AttestationError {
  if (e instanceof AttestationError) return e;
  // A CA or store failure: nothing was recorded, the agent may retry.
  return new AttestationError('internal', `the server could not complete the exchange (${(e as Error)?.name ?? 'Error'})`, { cause: e });
}

function clockOf(node: AttestedNode): TpmsClockInfo {
  return { clock: node.lastQuote.clock, resetCount: node.lastQuote.resetCount, restartCount: node.lastQuote.restartCount, safe: true };
}

/** Node selectors that come from the EK (kept across renewals), not from measurements. */
function isAdmissionSelector(s: string): boolean {
  return EK_SELECTOR_PREFIXES.some((p) => s.startsWith(p));
}
