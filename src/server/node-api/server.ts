/**
 * keel's Node API over gRPC + TLS (proto/node.proto). A thin layer: the
 * attestation logic is the Attestor's, issuing is the CA's, authorization is
 * the store's; this file maps messages, authenticates agents by their SVID on
 * the mTLS methods, and writes the audit lines of SVIDs issued or refused.
 */
import { X509Certificate, verify as verifySignature } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { bindingMessage, type BindingRequest } from '../../proto/channel-binding.js';
import { BindingRefused, BoundListener, type BoundAgent, type NodeConnection } from './bound-listener.js';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { TrustBundle, bundleFromJwks, bundleX509Der, jwtBundleJson, verifyX509Svid } from '../../spiffe/index.js';
import { checkCnfJwk, cnfThumbprint, parseStrictJson, WitSvidError } from '../../spiffe/index.js';
import { CaIssueError, CsrError, parseCsr, type CertificateAuthority, type ParsedCsr } from '../ca/index.js';
import type { AttestedNode, Datastore, RegistrationEntry } from '../store/index.js';
import type { AuditLog, Logger } from '../../log/index.js';
import { AttestationError } from '../attestation/errors.js';
import type { Attestor } from '../attestation/attestor.js';
import type { AttestParams, Challenge, ChallengeResponse } from '../attestation/types.js';
import { nodeApiService } from './proto.js';
import { ServerIdentity } from './server-identity.js';
import {
  challengeToWire,
  entryToWire,
  expectStep,
  refusalStatus,
  resultToWire,
  toAttestParams,
  toChallengeResponse,
  type WireAttestRequest,
  type WireAttestResponse,
  type WireSignJwtSvidRequest,
  type WireSignWitSvidRequest,
  type WireSignX509SvidsRequest,
  type WireSyncEntriesResponse,
  type WireX509SvidResult,
} from './wire.js';

/** Largest batch of CSRs in one SignX509Svids call. */
export const MAX_SVID_BATCH = 1000;
/** Room for everything but the event log in one message. */
const MESSAGE_OVERHEAD = 256 * 1024;

export type NodeApiCa = Pick<
  CertificateAuthority,
  'trustDomain' | 'issueX509Svid' | 'mintJwtSvid' | 'mintWitSvid' | 'bundle' | 'status' | 'onBundleChange' | 'activeCaCertificate' | 'rolloverCertificates' | 'onActivation'
>;

export interface NodeApiServerOptions {
  /** `host:port`; port 0 picks a free one. */
  readonly address: string;
  readonly attestor: Attestor;
  readonly ca: NodeApiCa;
  readonly store: Datastore;
  readonly audit: AuditLog;
  readonly logger?: Logger;
  readonly serverSvidTtlSeconds: number;
  readonly defaultX509SvidTtlSeconds: number;
  readonly defaultJwtSvidTtlSeconds: number;
  /** The attestor's event-log cap; the transport limit is this plus room for the rest. */
  readonly maxEventLogBytes: number;
  /** How long a stream waits for the agent's next message (default 60 s). */
  readonly stepTimeoutMs?: number;
  /** Quiet time before SyncEntries pushes after a change (default 100 ms). */
  readonly syncDebounceMs?: number;
  readonly serverDnsNames?: readonly string[];
  /** Unanswered challenges at once from one peer address (default 16) and in total (default 1024). */
  readonly maxChallengesPerPeer?: number;
  readonly maxChallenges?: number;
  /** How often expired nonces are deleted (default 30 s). */
  readonly pruneIntervalMs?: number;
  /** How long a new connection may take to send its channel binding (default 10 s). */
  readonly bindingTimeoutMs?: number;
}

type Agent = BoundAgent;

class CallRefused extends Error {
  constructor(
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${reason}: ${detail}`);
  }
}

export class NodeApiServer {
  readonly port: number;
  readonly #server: grpc.Server;
  readonly #identity: ServerIdentity;
  readonly #o: NodeApiServerOptions;
  readonly #td: TrustDomain;
  readonly #streams = new Set<() => void>();
  #listener!: BoundListener;
  /** Unanswered challenges by peer IP address, and in all. */
  readonly #challenges = new Map<string, number>();
  #challengeCount = 0;
  #pruneTimer: NodeJS.Timeout | undefined;
  #sweepTimer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;
  /** #agentAuthorities() of the CA certificates it was built from. */
  #authorities: { readonly ders: readonly Buffer[]; readonly bundle: TrustBundle } | undefined;

  private constructor(o: NodeApiServerOptions, server: grpc.Server, identity: ServerIdentity) {
    this.#o = o;
    this.#server = server;
    this.#identity = identity;
    this.port = 0;
    this.#td = o.ca.trustDomain;
  }

  static async start(o: NodeApiServerOptions): Promise<NodeApiServer> {
    const identity = await ServerIdentity.create({
      ca: o.ca,
      ttlSeconds: o.serverSvidTtlSeconds,
      ...(o.serverDnsNames ? { dnsNames: o.serverDnsNames } : {}),
      onError: (e) => o.logger?.error('node API: renewing the server SVID failed', { err: e }),
    });
    const limit = o.maxEventLogBytes + MESSAGE_OVERHEAD;
    const server = new grpc.Server({ 'grpc.max_receive_message_length': limit, 'grpc.max_send_message_length': 64 * 1024 * 1024 });
    const handlers: { api?: NodeApiServer } = {};
    server.addService(nodeApiService(), {
      Attest: (call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>) => void handlers.api!.#attest(call),
      RenewAgent: (call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>) => void handlers.api!.#renew(call),
      SyncEntries: (call: grpc.ServerWritableStream<unknown, WireSyncEntriesResponse>) => void handlers.api!.#sync(call),
      SignX509Svids: (call: grpc.ServerUnaryCall<WireSignX509SvidsRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => void handlers.api!.#signX509(call, cb),
      SignJwtSvid: (call: grpc.ServerUnaryCall<WireSignJwtSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => void handlers.api!.#signJwt(call, cb),
      SignWitSvid: (call: grpc.ServerUnaryCall<WireSignWitSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => void handlers.api!.#signWit(call, cb),
      Check: (call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>) => void handlers.api!.#check(call),
    });
    const api = new NodeApiServer(o, server, identity);
    handlers.api = api;
    try {
      api.#listener = await BoundListener.listen({
        address: o.address,
        context: identity.context,
        injector: server.createConnectionInjector(grpc.ServerCredentials.createInsecure()),
        verify: (req, socket) => api.#verifyBinding(req, socket),
        onRefused: (peer, e) => o.audit.record({ event: 'node.connection_refused', agentId: '', reason: e.reason, detail: e.detail, peer }),
        onError: (e) => o.logger?.error('node API: connection handling failed', { err: e }),
        ...(o.bindingTimeoutMs ? { bindingTimeoutMs: o.bindingTimeoutMs } : {}),
      });
    } catch (e) {
      identity.close();
      server.forceShutdown();
      throw e;
    }
    (api as { port: number }).port = api.#listener.port;
    identity.onRenewed((ctx) => api.#listener.setContext(ctx));
    // A node re-attested, renewed, evicted, banned or drifted: connections bound to its older SVIDs close at once.
    api.#unsubscribe = o.store.subscribe((c) => {
      if (c.kind !== 'nodes') return;
      clearTimeout(api.#sweepTimer);
      api.#sweepTimer = setTimeout(() => void api.#sweep(), 20);
    });
    api.#pruneTimer = setInterval(() => {
      o.store.pruneNonces(new Date()).catch((e: unknown) => o.logger?.warn('node API: pruning expired nonces failed', { err: e }));
    }, o.pruneIntervalMs ?? 30_000);
    api.#pruneTimer.unref();
    return api;
  }

  /** The server's TLS identity (its SVID is renewed at half life). */
  get identity(): ServerIdentity {
    return this.#identity;
  }

  async close(): Promise<void> {
    this.#identity.close();
    clearInterval(this.#pruneTimer);
    clearTimeout(this.#sweepTimer);
    this.#unsubscribe?.();
    for (const stop of this.#streams) stop();
    await this.#listener.close();
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        this.#server.forceShutdown();
        resolve();
      }, 2000);
      this.#server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  // ── Attest / RenewAgent ─────────────────────────────────────────────────

  /** Reads the stream's messages one at a time, each within the step timeout. */
  #reader(call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>): () => Promise<WireAttestRequest | undefined> {
    const it = call[Symbol.asyncIterator]() as AsyncIterator<WireAttestRequest>;
    const timeoutMs = this.#o.stepTimeoutMs ?? 60_000;
    return async () => {
      let timer: NodeJS.Timeout | undefined;
      try {
        const r = await Promise.race([
          it.next(),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new AttestationError('malformed', `no message within ${timeoutMs} ms`)), timeoutMs);
          }),
        ]);
        return r.done ? undefined : r.value;
      } finally {
        clearTimeout(timer);
      }
    };
  }

  async #attest(call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>): Promise<void> {
    const conn = this.#listener.forPeer(call.getPeer());
    const peer = conn?.peer ?? call.getPeer();
    let release: (() => void) | undefined;
    try {
      const { state, answer } = await this.#challengeRound(
        call,
        (params) => {
          release = this.#takeChallenge(conn?.peerIp ?? peer);
          return this.#o.attestor.begin(params, peer);
        },
        (e, state) => this.#protocolRefusal(e, peer, state?.ekHash),
      );
      release?.();
      release = undefined;
      const result = await this.#o.attestor.complete(state, answer);
      call.write(resultToWire(result));
      call.end();
    } catch (e) {
      this.#endWithRefusal(call, e);
    } finally {
      release?.();
    }
  }

  /**
   * The read-params / challenge / answer part every stream shares: `begin`
   * makes the challenge from the params; an answer that does not come, or
   * does not parse, spends the nonce (the challenge cannot be answered later).
   * Refusals found here (message order, timeout) go to `refused` for their
   * audit line, then end the stream.
   */
  async #challengeRound<B extends { readonly challenge: Challenge; readonly state: { readonly nonce: Buffer } }>(
    call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>,
    begin: (params: AttestParams) => Promise<B>,
    refused: (e: AttestationError, state?: B['state']) => void,
  ): Promise<B & { answer: ChallengeResponse }> {
    const next = this.#reader(call);
    let params;
    try {
      params = toAttestParams(expectStep(await next(), 'params'));
    } catch (e) {
      if (e instanceof AttestationError) refused(e);
      throw e;
    }
    const begun = await begin(params);
    call.write(challengeToWire(begun.challenge));
    try {
      return { ...begun, answer: toChallengeResponse(expectStep(await next(), 'challenge_response')) };
    } catch (e) {
      await this.#o.store.consumeNonce(begun.state.nonce.toString('hex'), new Date()).catch(() => undefined);
      if (e instanceof AttestationError) refused(e, begun.state);
      throw e;
    }
  }

  /** Counts an unanswered challenge against its peer and the total; refuses beyond the limits. */
  #takeChallenge(peerIp: string): () => void {
    const perPeer = this.#o.maxChallengesPerPeer ?? 16;
    const total = this.#o.maxChallenges ?? 1024;
    const mine = this.#challenges.get(peerIp) ?? 0;
    if (mine >= perPeer || this.#challengeCount >= total) {
      const detail = mine >= perPeer ? `${mine} unanswered challenges from ${peerIp} (limit ${perPeer})` : `${this.#challengeCount} unanswered challenges in all (limit ${total})`;
      throw this.#protocolRefusal(new AttestationError('too-many-challenges', detail), peerIp);
    }
    this.#challenges.set(peerIp, mine + 1);
    this.#challengeCount++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#challengeCount--;
      const n = (this.#challenges.get(peerIp) ?? 1) - 1;
      if (n <= 0) this.#challenges.delete(peerIp);
      else this.#challenges.set(peerIp, n);
    };
  }

  /** Unanswered challenges now (for tests and metrics). */
  get pendingChallenges(): number {
    return this.#challengeCount;
  }

  // ── Check (continuous attestation) ───────────────────────────────────────

  async #check(call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>): Promise<void> {
    try {
      let agent: Agent;
      try {
        agent = await this.#authenticate(call, { requireActive: true });
      } catch (e) {
        if (e instanceof CallRefused) this.#o.audit.record({ event: 'node.check_refused', agentId: '', reason: e.reason, detail: e.detail });
        throw e;
      }
      const { state, answer } = await this.#challengeRound(
        call,
        (params) => this.#o.attestor.beginCheck({ agentId: agent.agentId, presentedSerial: agent.serial }, params),
        (e) => this.#o.audit.record({ event: 'node.check_refused', agentId: agent.agentId.toString(), reason: e.reason, detail: e.detail }),
      );
      const { selectors } = await this.#o.attestor.completeCheck(state, answer);
      call.write({ result: { spiffe_id: agent.agentId.toString(), svid_chain: [], bundle: Buffer.alloc(0), expires_at: 0, selectors: [...selectors] } });
      call.end();
    } catch (e) {
      this.#endWithRefusal(call, e);
    }
  }

  /** A refusal found by this layer (message order, timeout, challenge limits), audited like the attestor's. */
  #protocolRefusal(e: AttestationError, peer: string, ekHash?: string): AttestationError {
    this.#o.audit.record({ event: 'node.attestation_refused', reason: e.reason, detail: e.detail, peer, ...(ekHash ? { ekHash } : {}) });
    return e;
  }

  async #renew(call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>): Promise<void> {
    try {
      let agent: Agent;
      try {
        agent = await this.#authenticate(call, { requireActive: false });
      } catch (e) {
        if (e instanceof CallRefused) {
          this.#o.audit.record({ event: 'node.renewal_refused', agentId: '', reason: e.reason, detail: `${e.detail} (peer ${call.getPeer()})` });
        }
        throw e;
      }
      const { state, csr, answer } = await this.#challengeRound(
        call,
        (params) => this.#o.attestor.beginRenewal({ agentId: agent.agentId, presentedSerial: agent.serial }, params),
        (e) => this.#o.audit.record({ event: 'node.renewal_refused', agentId: agent.agentId.toString(), reason: e.reason, detail: e.detail }),
      );
      const result = await this.#o.attestor.completeRenewal(state, csr, answer);
      call.write(resultToWire(result));
      call.end();
    } catch (e) {
      this.#endWithRefusal(call, e);
    }
  }

  #endWithRefusal(call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>, e: unknown): void {
    let status;
    if (e instanceof AttestationError) status = refusalStatus(e.reason, e.detail);
    else if (e instanceof CallRefused) status = refusalStatus(e.reason, e.detail);
    else {
      this.#o.logger?.error('node API: attestation stream failed', { err: e });
      status = refusalStatus('internal', 'the server could not complete the exchange');
    }
    call.emit('error', status);
  }

  // ── agent authentication (mTLS) ─────────────────────────────────────────

  /**
   * Keel's own CA certificates: agent SVIDs are only ever signed by them. The
   * bundle is built again only when the CA's certificates change (rotation),
   * not for every binding.
   */
  #agentAuthorities(): TrustBundle {
    const ders = this.#o.ca.status().flatMap((s) => (s.kind === 'x509' && s.certificateDer ? [s.certificateDer] : []));
    const cached = this.#authorities;
    if (cached && cached.ders.length === ders.length && ders.every((d, i) => d === cached.ders[i] || d.equals(cached.ders[i]!))) return cached.bundle;
    const bundle = TrustBundle.create({ trustDomain: this.#td, x509Authorities: ders.map((d) => new X509Certificate(d)) });
    this.#authorities = { ders, bundle };
    return bundle;
  }

  /**
   * Judges an agent's channel binding: the chain is an agent SVID of this
   * trust domain signed by keel's CA, the signature over this connection's
   * exporter verifies with the SVID's key (held only by the node's TPM), and
   * the SVID is the one the server recorded last for an active node.
   */
  async #verifyBinding(req: Extract<BindingRequest, { kind: 'agent' }>, socket: TLSSocket): Promise<BoundAgent> {
    let leaf: X509Certificate;
    let id: SpiffeId;
    try {
      const chain = req.chain.map((d) => new X509Certificate(d));
      leaf = chain[0]!;
      id = verifyX509Svid(chain, this.#agentAuthorities()).id;
    } catch (e) {
      throw new BindingRefused('unauthenticated', `the certificate is not an SVID of ${this.#td.name}: ${(e as Error).message}`);
    }
    if (!this.#o.attestor.ekHashOfAgentId(id)) throw new BindingRefused('unauthenticated', `${id.toString()} is not an agent ID`);
    let valid = false;
    try {
      valid = verifySignature('sha256', bindingMessage(socket), leaf.publicKey, req.signature);
    } catch {
      valid = false;
    }
    if (!valid) throw new BindingRefused('unauthenticated', `the channel binding signature does not verify with the key of ${id.toString()}'s SVID: the key is not on this connection`);
    const serial = leaf.serialNumber.toLowerCase();
    const node = await this.#o.store.getNode(id);
    this.#requireCurrent(id, serial, node);
    return { agentId: id, serial };
  }

  /** The node is active and holds exactly this SVID; CallRefused otherwise (BindingRefused at binding time). */
  #requireCurrent(id: SpiffeId, serial: string, node: AttestedNode | undefined): asserts node is AttestedNode {
    if (!node) throw new BindingRefused('not-active', `${id.toString()} is not an attested node`);
    if (node.status.kind !== 'active') {
      throw new BindingRefused('not-active', `${id.toString()} is ${node.status.kind}${'reason' in node.status ? ` (${node.status.reason})` : ''}; it must attest again`);
    }
    if (node.status.svid.serial !== serial) throw new BindingRefused('superseded', `SVID ${serial} of ${id.toString()} was replaced; only the latest one is accepted`);
  }

  /** Closes every connection bound to an SVID its node no longer holds. */
  async #sweep(): Promise<void> {
    const byAgent = new Map<string, NodeConnection[]>();
    for (const c of this.#listener.connections()) {
      if (!c.binding) continue;
      const k = c.binding.agentId.toString();
      byAgent.set(k, [...(byAgent.get(k) ?? []), c]);
    }
    for (const conns of byAgent.values()) {
      const b = conns[0]!.binding!;
      let node: AttestedNode | undefined;
      try {
        node = await this.#o.store.getNode(b.agentId);
      } catch (e) {
        this.#o.logger?.warn('node API: checking bound connections failed', { err: e });
        return;
      }
      for (const c of conns) {
        try {
          this.#requireCurrent(c.binding!.agentId, c.binding!.serial, node);
        } catch (e) {
          this.#o.audit.record({ event: 'node.connection_closed', agentId: b.agentId.toString(), reason: (e as BindingRefused).reason, peer: c.peer });
          c.destroy();
        }
      }
    }
  }

  /**
   * The calling agent, from the binding of the connection that carried the
   * call; CallRefused('unauthenticated' | 'superseded' | 'not-active') otherwise.
   */
  async #authenticate(call: { getPeer(): string }, opts: { requireActive: boolean }): Promise<Agent & { node?: AttestedNode }> {
    const conn = this.#listener.forPeer(call.getPeer());
    const binding = conn?.binding;
    if (!binding) throw new CallRefused('unauthenticated', 'the connection is not bound to an agent SVID: bind it with the agent key');
    const node = await this.#o.store.getNode(binding.agentId);
    try {
      this.#requireCurrent(binding.agentId, binding.serial, node);
    } catch (e) {
      const r = e as BindingRefused;
      // Renewal is refused by the attestor with its own reason; everything else stops here.
      if (opts.requireActive || r.reason === 'superseded') throw new CallRefused(r.reason, r.detail);
      return { ...binding };
    }
    return { ...binding, node };
  }

  async #authorized(agent: { agentId: SpiffeId; node?: AttestedNode }): Promise<{ entries: readonly RegistrationEntry[]; revision: number }> {
    return this.#o.store.authorizedEntries(agent.agentId, agent.node?.selectors ?? []);
  }

  // ── SyncEntries ─────────────────────────────────────────────────────────

  async #sync(call: grpc.ServerWritableStream<unknown, WireSyncEntriesResponse>): Promise<void> {
    let agent: Agent & { node?: AttestedNode };
    try {
      agent = await this.#authenticate(call, { requireActive: true });
    } catch (e) {
      call.emit('error', this.#statusOf(e));
      return;
    }
    const debounceMs = this.#o.syncDebounceMs ?? 100;
    let timer: NodeJS.Timeout | undefined;
    let running: Promise<void> = Promise.resolve();
    let done = false;
    const stop = (error?: Partial<grpc.StatusObject>): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      unsubscribeStore();
      unsubscribeCa();
      this.#streams.delete(stop);
      if (error) call.emit('error', error);
      else if (!call.writableEnded) call.end();
    };
    const push = async (): Promise<void> => {
      if (done) return;
      try {
        const node = await this.#o.store.getNode(agent.agentId);
        try {
          this.#requireCurrent(agent.agentId, agent.serial, node);
        } catch (e) {
          throw new CallRefused((e as BindingRefused).reason, (e as BindingRefused).detail);
        }
        const msg = await this.#syncMessage(agent.agentId, node);
        if (!done) call.write(msg);
      } catch (e) {
        stop(this.#statusOf(e));
      }
    };
    const schedule = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        running = running.then(push);
      }, debounceMs);
    };
    const unsubscribeStore = this.#o.store.subscribe(schedule);
    const unsubscribeCa = this.#o.ca.onBundleChange(schedule);
    this.#streams.add(stop);
    call.on('cancelled', () => stop());
    call.on('close', () => stop());
    running = running.then(push);
  }

  async #syncMessage(agentId: SpiffeId, node: AttestedNode): Promise<WireSyncEntriesResponse> {
    const { entries, revision } = await this.#o.store.authorizedEntries(agentId, node.selectors);
    const own = this.#o.ca.bundle();
    const x509: Record<string, Buffer> = { [this.#td.idString]: bundleX509Der(own) };
    const jwt: Record<string, Buffer> = { [this.#td.idString]: Buffer.from(jwtBundleJson(own)) };
    const federated = new Map(entries.flatMap((e) => e.federatesWith.map((td) => [td.name, td] as const)));
    for (const td of federated.values()) {
      const stored = await this.#o.store.getFederatedBundle(td);
      if (!stored) continue;
      const b = bundleFromJwks(td, stored.jwks);
      x509[td.idString] = bundleX509Der(b);
      jwt[td.idString] = Buffer.from(jwtBundleJson(b));
    }
    return { entries: entries.map(entryToWire), x509_bundles: x509, jwt_bundles: jwt, revision };
  }

  #statusOf(e: unknown): Partial<grpc.StatusObject> {
    if (e instanceof CallRefused) {
      return refusalStatus(e.reason, e.detail, e.reason === 'unauthenticated' || e.reason === 'superseded' ? grpc.status.UNAUTHENTICATED : grpc.status.PERMISSION_DENIED);
    }
    this.#o.logger?.error('node API: call failed', { err: e });
    return refusalStatus('internal', 'the server could not complete the call');
  }

  // ── SignX509Svids / SignJwtSvid ─────────────────────────────────────────

  /** An SVID call from a caller that is not an active agent: one audit line for the whole call. */
  async #signingAgent(call: grpc.ServerUnaryCall<unknown, unknown>): Promise<Agent & { node?: AttestedNode }> {
    try {
      return await this.#authenticate(call, { requireActive: true });
    } catch (e) {
      if (e instanceof CallRefused) this.#o.audit.record({ event: 'svid.refused', agentId: '', entryId: '', reason: e.reason });
      throw e;
    }
  }

  async #signX509(call: grpc.ServerUnaryCall<WireSignX509SvidsRequest, unknown>, cb: grpc.sendUnaryData<unknown>): Promise<void> {
    try {
      const agent = await this.#signingAgent(call);
      const requests = call.request.requests ?? [];
      if (requests.length > MAX_SVID_BATCH) throw new CallRefused('too-large', `${requests.length} requests, at most ${MAX_SVID_BATCH} per call`);
      const { entries } = await this.#authorized(agent);
      const byId = new Map(entries.map((e) => [e.id as string, e]));
      const agentId = agent.agentId.toString();
      const refuse = (entryId: string, reason: string): WireX509SvidResult => {
        this.#o.audit.record({ event: 'svid.refused', agentId, entryId, reason });
        return { entry_id: entryId, cert_chain: [], expires_at: 0, error: reason };
      };
      const results = await Promise.all(
        requests.map(async (r): Promise<WireX509SvidResult> => {
          const entry = byId.get(r.entry_id);
          if (!entry) return refuse(r.entry_id, 'not-authorized');
          let csr: ParsedCsr;
          try {
            csr = parseCsr(r.csr);
          } catch (e) {
            if (e instanceof CsrError) return refuse(r.entry_id, e.reason === 'too-large' ? 'too-large' : 'csr-invalid');
            throw e;
          }
          try {
            const svid = await this.#o.ca.issueX509Svid({
              csr,
              spiffeId: entry.spiffeId,
              dnsNames: entry.dnsNames,
              ttlSeconds: entry.x509SvidTtl ?? this.#o.defaultX509SvidTtlSeconds,
            });
            this.#o.audit.record({
              event: 'svid.x509_issued',
              spiffeId: svid.spiffeId,
              entryId: entry.id,
              agentId,
              serial: svid.serial.toLowerCase(),
              notAfter: svid.notAfter.toISOString(),
              keyId: svid.caKeyLabel,
            });
            return { entry_id: entry.id, cert_chain: [svid.certDer, ...svid.chainDer], expires_at: Math.floor(svid.notAfter.getTime() / 1000), error: '' };
          } catch (e) {
            // A request the CA refuses (e.g. its TTL) is the caller's; anything else is ours.
            if (e instanceof CaIssueError) return refuse(entry.id, 'invalid-request');
            this.#o.logger?.error('node API: issuing an X.509-SVID failed', { err: e, entryId: entry.id });
            return refuse(entry.id, 'internal');
          }
        }),
      );
      cb(null, { results });
    } catch (e) {
      cb(this.#statusOf(e));
    }
  }

  async #signJwt(call: grpc.ServerUnaryCall<WireSignJwtSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>): Promise<void> {
    try {
      const agent = await this.#signingAgent(call);
      const agentId = agent.agentId.toString();
      const { entry_id: entryId, audience } = call.request;
      const { entries } = await this.#authorized(agent);
      const entry = entries.find((e) => e.id === entryId);
      if (!entry) {
        this.#o.audit.record({ event: 'svid.refused', agentId, entryId, reason: 'not-authorized' });
        throw new CallRefused('not-authorized', `entry ${JSON.stringify(entryId)} is not one this agent may hold`);
      }
      let jwt;
      try {
        jwt = await this.#o.ca.mintJwtSvid({ spiffeId: entry.spiffeId, audience, ttlSeconds: entry.jwtSvidTtl ?? this.#o.defaultJwtSvidTtlSeconds });
      } catch (e) {
        const reason = e instanceof CaIssueError ? 'invalid-request' : 'internal';
        this.#o.audit.record({ event: 'svid.refused', agentId, entryId, reason });
        if (reason === 'internal') throw e;
        throw new CallRefused(reason, (e as Error).message);
      }
      this.#o.audit.record({
        event: 'svid.jwt_issued',
        spiffeId: jwt.spiffeId,
        entryId: entry.id,
        agentId,
        audience: [...jwt.audience],
        notAfter: jwt.expiresAt.toISOString(),
        keyId: jwt.kid,
      });
      cb(null, { token: jwt.token, expires_at: Math.floor(jwt.expiresAt.getTime() / 1000) });
    } catch (e) {
      cb(this.#statusOf(e));
    }
  }

  /** SignWitSvid: as SignJwtSvid, for the workload public key the agent sends (it becomes cnf.jwk). */
  async #signWit(call: grpc.ServerUnaryCall<WireSignWitSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>): Promise<void> {
    try {
      const agent = await this.#signingAgent(call);
      const agentId = agent.agentId.toString();
      const { entry_id: entryId, public_key_jwk: jwkText } = call.request;
      const refuse = (reason: string, detail: string): never => {
        this.#o.audit.record({ event: 'svid.refused', agentId, entryId, reason, svid: 'wit' });
        throw new CallRefused(reason, detail);
      };
      const { entries } = await this.#authorized(agent);
      const entry = entries.find((e) => e.id === entryId);
      if (!entry) refuse('not-authorized', `entry ${JSON.stringify(entryId)} is not one this agent may hold`);
      let cnf;
      try {
        if (typeof jwkText !== 'string' || jwkText.length === 0 || jwkText.length > 8192) throw new WitSvidError('bad-cnf', 'public_key_jwk must be a JWK of at most 8192 characters');
        cnf = checkCnfJwk(parseStrictJson(jwkText)).jwk;
      } catch (e) {
        return refuse('invalid-request', `public_key_jwk: ${(e as Error).message}`);
      }
      let wit;
      try {
        wit = await this.#o.ca.mintWitSvid({ spiffeId: entry!.spiffeId, publicKeyJwk: cnf, ttlSeconds: entry!.jwtSvidTtl ?? this.#o.defaultJwtSvidTtlSeconds });
      } catch (e) {
        if (e instanceof CaIssueError) return refuse('invalid-request', e.message);
        this.#o.audit.record({ event: 'svid.refused', agentId, entryId, reason: 'internal', svid: 'wit' });
        throw e;
      }
      this.#o.audit.record({
        event: 'svid.wit_issued',
        spiffeId: wit.spiffeId,
        entryId: entry!.id,
        agentId,
        jti: wit.jti,
        cnfThumbprint: cnfThumbprint(cnf),
        notAfter: wit.expiresAt.toISOString(),
        keyId: wit.kid,
      });
      cb(null, { token: wit.token, expires_at: Math.floor(wit.expiresAt.getTime() / 1000) });
    } catch (e) {
      cb(this.#statusOf(e));
    }
  }
}
