/**
 * keel's Node API over gRPC + TLS (proto/node.proto). A thin layer: the
 * attestation logic is the Attestor's, issuing is the CA's, authorization is
 * the store's; this file maps messages, authenticates agents by their SVID on
 * the mTLS methods, and writes the audit lines of SVIDs issued or refused.
 */
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { TrustBundle, bundleFromJwks, bundleX509Der, jwtBundleJson, verifyX509Svid } from '../../spiffe/index.js';
import { CaIssueError, CsrError, parseCsr, type CertificateAuthority, type ParsedCsr } from '../ca/index.js';
import type { AttestedNode, Datastore, RegistrationEntry } from '../store/index.js';
import type { AuditLog, Logger } from '../../log/index.js';
import { AttestationError } from '../attestation/errors.js';
import type { Attestor } from '../attestation/attestor.js';
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
  type WireSignX509SvidsRequest,
  type WireSyncEntriesResponse,
  type WireX509SvidResult,
} from './wire.js';

/** Largest batch of CSRs in one SignX509Svids call. */
export const MAX_SVID_BATCH = 1000;
/** Room for everything but the event log in one message. */
const MESSAGE_OVERHEAD = 256 * 1024;

export type NodeApiCa = Pick<CertificateAuthority, 'trustDomain' | 'issueX509Svid' | 'mintJwtSvid' | 'bundle' | 'status' | 'onBundleChange'>;

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
}

interface Agent {
  readonly agentId: SpiffeId;
  readonly serial: string;
}

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

  private constructor(o: NodeApiServerOptions, server: grpc.Server, identity: ServerIdentity, port: number) {
    this.#o = o;
    this.#server = server;
    this.#identity = identity;
    this.port = port;
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
    let api: NodeApiServer | undefined;
    server.addService(nodeApiService(), {
      Attest: (call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>) => void api!.#attest(call),
      RenewAgent: (call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>) => void api!.#renew(call),
      SyncEntries: (call: grpc.ServerWritableStream<unknown, WireSyncEntriesResponse>) => void api!.#sync(call),
      SignX509Svids: (call: grpc.ServerUnaryCall<WireSignX509SvidsRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => void api!.#signX509(call, cb),
      SignJwtSvid: (call: grpc.ServerUnaryCall<WireSignJwtSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => void api!.#signJwt(call, cb),
    });
    let port: number;
    try {
      port = await new Promise<number>((resolve, reject) =>
        server.bindAsync(o.address, identity.credentials, (err, p) => (err ? reject(err) : resolve(p))),
      );
    } catch (e) {
      identity.close();
      server.forceShutdown();
      throw e;
    }
    api = new NodeApiServer(o, server, identity, port);
    return api;
  }

  /** The server's TLS identity (its SVID is renewed at half life). */
  get identity(): ServerIdentity {
    return this.#identity;
  }

  async close(): Promise<void> {
    this.#identity.close();
    for (const stop of this.#streams) stop();
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
    const next = this.#reader(call);
    const peer = call.getPeer();
    try {
      let params;
      try {
        params = toAttestParams(expectStep(await next(), 'params'));
      } catch (e) {
        throw this.#protocolRefusal(e, peer);
      }
      const { challenge, state } = await this.#o.attestor.begin(params, peer);
      call.write(challengeToWire(challenge));
      let answer;
      try {
        answer = toChallengeResponse(expectStep(await next(), 'challenge_response'));
      } catch (e) {
        // The challenge is spent: an answer that never comes cannot be made later.
        await this.#o.store.consumeNonce(state.nonce.toString('hex'), new Date()).catch(() => undefined);
        throw this.#protocolRefusal(e, peer, state.ekHash);
      }
      const result = await this.#o.attestor.complete(state, answer);
      call.write(resultToWire(result));
      call.end();
    } catch (e) {
      this.#endWithRefusal(call, e);
    }
  }

  /** A refusal found by this layer (message order, timeout), audited like the attestor's. */
  #protocolRefusal(e: unknown, peer: string, ekHash?: string): unknown {
    if (!(e instanceof AttestationError)) return e;
    this.#o.audit.record({ event: 'node.attestation_refused', reason: e.reason, detail: e.detail, peer, ...(ekHash ? { ekHash } : {}) });
    return e;
  }

  async #renew(call: grpc.ServerDuplexStream<WireAttestRequest, WireAttestResponse>): Promise<void> {
    const next = this.#reader(call);
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
      let params;
      try {
        params = toAttestParams(expectStep(await next(), 'params'));
      } catch (e) {
        throw this.#renewalProtocolRefusal(e, agent.agentId);
      }
      const { challenge, state, csr } = await this.#o.attestor.beginRenewal({ agentId: agent.agentId, presentedSerial: agent.serial }, params);
      call.write(challengeToWire(challenge));
      let answer;
      try {
        answer = toChallengeResponse(expectStep(await next(), 'challenge_response'));
      } catch (e) {
        await this.#o.store.consumeNonce(state.nonce.toString('hex'), new Date()).catch(() => undefined);
        throw this.#renewalProtocolRefusal(e, agent.agentId);
      }
      const result = await this.#o.attestor.completeRenewal(state, csr, answer);
      call.write(resultToWire(result));
      call.end();
    } catch (e) {
      this.#endWithRefusal(call, e);
    }
  }

  #renewalProtocolRefusal(e: unknown, agentId: SpiffeId): unknown {
    if (!(e instanceof AttestationError)) return e;
    this.#o.audit.record({ event: 'node.renewal_refused', agentId: agentId.toString(), reason: e.reason, detail: e.detail });
    return e;
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

  /** Keel's own CA certificates: agent SVIDs are only ever signed by them. */
  #agentAuthorities(): TrustBundle {
    const certs = this.#o.ca
      .status()
      .flatMap((s) => (s.kind === 'x509' && s.certificateDer ? [new X509Certificate(s.certificateDer)] : []));
    return TrustBundle.create({ trustDomain: this.#td, x509Authorities: certs });
  }

  /** The calling agent from its TLS client certificate; CallRefused('unauthenticated' | 'not-active') otherwise. */
  async #authenticate(call: { getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } } | null }, opts: { requireActive: boolean }): Promise<Agent & { node?: AttestedNode }> {
    const raw = call.getAuthContext()?.sslPeerCertificate?.raw;
    if (!raw || raw.length === 0) throw new CallRefused('unauthenticated', 'no client certificate: call with the agent SVID');
    let id: SpiffeId;
    let serial: string;
    try {
      const leaf = new X509Certificate(raw);
      id = verifyX509Svid([leaf], this.#agentAuthorities()).id;
      serial = leaf.serialNumber.toLowerCase();
    } catch (e) {
      throw new CallRefused('unauthenticated', `the client certificate is not an SVID of ${this.#td.name}: ${(e as Error).message}`);
    }
    if (!this.#o.attestor.ekHashOfAgentId(id)) throw new CallRefused('unauthenticated', `${id.toString()} is not an agent ID`);
    if (!opts.requireActive) return { agentId: id, serial };
    const node = await this.#o.store.getNode(id);
    if (!node || node.status.kind !== 'active') {
      throw new CallRefused('not-active', `${id.toString()} is ${node ? node.status.kind : 'not an attested node'}`);
    }
    return { agentId: id, serial, node };
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
        if (!node || node.status.kind !== 'active') throw new CallRefused('not-active', `${agent.agentId.toString()} lost its identity`);
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
    if (e instanceof CallRefused) return refusalStatus(e.reason, e.detail, e.reason === 'unauthenticated' ? grpc.status.UNAUTHENTICATED : grpc.status.PERMISSION_DENIED);
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
}
