/**
 * The agent's long-lived mTLS session with the server: SyncEntries,
 * SignX509Svids and SignJwtSvid (the NodeApi the SVID manager uses). Unlike
 * the per-exchange client of attestation, it lives as long as the agent:
 * when the agent SVID is renewed the channel is rebuilt with the new
 * certificate and the sync stream moves over to it without the manager
 * noticing; a sync stream that the server ends, even cleanly, is reported
 * as ended so that the manager reconnects; keepalive pings find a server
 * that vanished without closing the connection.
 */
import * as grpc from '@grpc/grpc-js';
import {
  BoundChannelCredentials,
  NodeApiError,
  runExchange,
  signJwtSvidCall,
  signWitSvidCall,
  signX509SvidsCall,
  type AgentCredential,
  type ServerCaEndorsement,
  type ExchangeMethod,
  type WireAnswer,
  type WireAttestResult,
  type WireChallenge,
  type WireParams,
  type WireSyncEntries,
  type WireX509SvidResult,
} from './attestation/index.js';
import { nodeApiClientConstructor } from './attestation/proto.js';
import { ServerAddresses } from './server-addresses.js';
import type { NodeApi, SyncHandlers } from './manager/node-api.js';

export interface NodeSessionOptions {
  /** `host:port` of the server's Node API, or the servers that share one store (each connection to the current one; see ServerAddresses). */
  readonly address: string | ServerAddresses;
  /** The session moved to another server after a transport failure. */
  readonly onFailover?: (e: { from: string; to: string; detail: string }) => void;
  readonly trustDomain: string;
  /** PEM authorities the server's certificate must chain to; asked again each time the channel is rebuilt (the bundle rotates). */
  readonly serverTrust: () => string;
  /** The agent SVID and its TPM-resident key: each connection is bound to it. */
  readonly svid: AgentCredential;
  /** The server's certificate was refused (reason `server-certificate-clock`, `-untrusted`, `-identity`). */
  readonly onServerCertificateRefused?: (e: NodeApiError) => void;
  /** Deadline of the unary calls (default 30 s). */
  readonly deadlineMs?: number;
  /** Keepalive ping interval on the channel (default 30 s). */
  readonly keepaliveMs?: number;
  /** Clock skew tolerated when checking the server's certificate (ms). */
  readonly clockToleranceMs?: number;
  /** The server's CA was new to this agent and accepted through a rollover certificate. */
  readonly onServerCaEndorsed?: (e: ServerCaEndorsement) => void;
}

type GrpcClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;


interface SyncSubscription {
  readonly handlers: SyncHandlers;
  call: grpc.ClientReadableStream<WireSyncEntries> | undefined;
  done: boolean;
}

export class NodeSession implements NodeApi {
  readonly #o: NodeSessionOptions;
  readonly #serverId: string;
  #svid: NodeSessionOptions['svid'];
  #client: GrpcClient;
  #creds!: BoundChannelCredentials;
  /** Set after a transport failure: the next call rebuilds the channel with the latest trust. */
  #stale = false;
  #closed = false;
  readonly #syncs = new Set<SyncSubscription>();

  readonly #addresses: ServerAddresses;
  /** The address the current channel goes to. */
  #target: string;

  constructor(o: NodeSessionOptions) {
    this.#o = o;
    this.#addresses = typeof o.address === 'string' ? new ServerAddresses([o.address]) : o.address;
    this.#target = this.#addresses.current;
    this.#serverId = `spiffe://${o.trustDomain}/keel/server`;
    this.#svid = o.svid;
    this.#client = this.#connect();
  }

  #connect(): GrpcClient {
    const creds = new BoundChannelCredentials({
      trustPem: this.#o.serverTrust,
      serverId: this.#serverId,
      credential: () => this.#svid,
      clockToleranceMs: this.#o.clockToleranceMs ?? 0,
      ...(this.#o.onServerCaEndorsed ? { onServerCaEndorsed: this.#o.onServerCaEndorsed } : {}),
    });
    this.#creds = creds;
    const Ctor = nodeApiClientConstructor();
    this.#target = this.#addresses.current;
    return new Ctor(this.#target, creds, {
      'grpc.default_authority': this.#target,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      'grpc.keepalive_time_ms': this.#o.keepaliveMs ?? 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // Each rebuilt channel is a new connection, not one shared from grpc-js's subchannel pool.
      'grpc.use_local_subchannel_pool': 1,
    }) as unknown as GrpcClient;
  }

  #channel(): GrpcClient {
    if (this.#closed) throw new NodeApiError('transport', grpc.status.UNAVAILABLE, 'the node session is closed');
    if (this.#stale) {
      this.#stale = false;
      const old = this.#client;
      this.#client = this.#connect();
      old.close();
    }
    return this.#client;
  }

  #failed(e: unknown): NodeApiError {
    // The server's refusal of the binding, the server's certificate refused, the TPM unable to sign the binding.
    const err = this.#creds.failureOf(e);
    if (err.reason.startsWith('server-certificate-')) this.#o.onServerCertificateRefused?.(err);
    if (err.reason === 'transport' || err.reason === 'tpm' || err.reason.startsWith('server-certificate-')) this.#stale = true;
    if (err.reason === 'transport') {
      const moved = this.#addresses.failedOver(this.#target);
      if (moved) this.#o.onFailover?.({ ...moved, detail: err.detail });
    }
    return err;
  }

  /** A call on the current channel, with the deadline; a closed session rejects like a failed call. */
  #call<T>(f: (client: grpc.Client, options: grpc.CallOptions, mapError: (e: unknown) => NodeApiError) => Promise<T>): Promise<T> {
    let client: GrpcClient;
    try {
      client = this.#channel();
    } catch (e) {
      return Promise.reject(this.#failed(e));
    }
    return f(client, { deadline: Date.now() + (this.#o.deadlineMs ?? 30_000) }, (e) => this.#failed(e));
  }

  /** One challenge exchange (Check, RenewAgent) on the session's bound connection. */
  exchange(method: ExchangeMethod, params: WireParams, answer: (challenge: WireChallenge) => Promise<WireAnswer>): Promise<WireAttestResult> {
    return this.#call((client, options, mapError) => runExchange(client, method, params, answer, options, mapError));
  }

  /** Presents a new agent SVID from now on; open sync streams move to the new channel. */
  setSvid(svid: NodeSessionOptions['svid']): void {
    this.#svid = svid;
    this.#stale = true;
    const client = this.#channel();
    for (const sub of this.#syncs) {
      if (sub.done) continue;
      const old = sub.call;
      sub.call = undefined;
      old?.cancel();
      this.#openSync(sub, client);
    }
  }

  syncEntries(handlers: SyncHandlers): () => void {
    const sub: SyncSubscription = { handlers, call: undefined, done: false };
    this.#syncs.add(sub);
    try {
      this.#openSync(sub, this.#channel());
    } catch (e) {
      this.#syncs.delete(sub);
      sub.done = true;
      const err = this.#failed(e);
      queueMicrotask(() => handlers.onEnd(err));
    }
    return () => {
      sub.done = true;
      this.#syncs.delete(sub);
      sub.call?.cancel();
    };
  }

  #openSync(sub: SyncSubscription, client: GrpcClient): void {
    const call = client.SyncEntries!({}) as grpc.ClientReadableStream<WireSyncEntries>;
    sub.call = call;
    const end = (err: NodeApiError): void => {
      // A call replaced by setSvid, or cancelled by its owner, ends silently.
      if (sub.done || sub.call !== call) return;
      sub.done = true;
      this.#syncs.delete(sub);
      sub.handlers.onEnd(err);
    };
    call.on('data', (u: WireSyncEntries) => {
      if (!sub.done && sub.call === call) sub.handlers.onUpdate(u);
    });
    call.on('error', (e: grpc.ServiceError) => end(this.#failed(e)));
    // grpc-js reports a clean end of a server stream only as 'status' OK + 'end'.
    call.on('status', (s: grpc.StatusObject) => {
      if (s.code === grpc.status.OK) {
        this.#stale = true;
        end(new NodeApiError('transport', grpc.status.UNAVAILABLE, 'the server closed the sync stream'));
      }
    });
  }

  signX509Svids(requests: readonly { readonly entryId: string; readonly csr: Buffer }[]): Promise<WireX509SvidResult[]> {
    return this.#call((client, options, mapError) => signX509SvidsCall(client, requests, options, mapError));
  }

  signJwtSvid(entryId: string, audience: readonly string[]): Promise<{ token: string; expiresAt: Date }> {
    return this.#call((client, options, mapError) => signJwtSvidCall(client, entryId, audience, options, mapError));
  }

  /** SignWitSvid: a WIT-SVID of the entry for the workload public key (JWK JSON with alg). */
  signWitSvid(entryId: string, publicKeyJwk: string): Promise<{ token: string; expiresAt: Date }> {
    return this.#call((client, options, mapError) => signWitSvidCall(client, entryId, publicKeyJwk, options, mapError));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const sub of this.#syncs) {
      sub.done = true;
      sub.call?.cancel();
    }
    this.#syncs.clear();
    this.#client.close();
  }
}
