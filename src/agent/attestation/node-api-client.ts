/**
 * The agent's side of keel's Node API: a gRPC channel over TLS that trusts
 * the configured bundle and accepts only the server's SPIFFE ID
 * (`spiffe://<td>/keel/server`), with the agent SVID as client certificate
 * once it has one. Refusals come back as NodeApiError with the server's reason.
 */
import * as grpc from '@grpc/grpc-js';
import { BoundChannelCredentials } from './bound-credentials.js';
import type { AgentCredential } from './credential.js';
import {
  nodeApiClientConstructor,
  type WireAttestParams, type WireAttestResult, type WireChallenge, type WireChallengeResponse,
  type WireSyncEntriesResponse, type WireX509SvidResult,
} from '../../proto/node-api.js';

export type { WireChallenge, WireAttestResult } from '../../proto/node-api.js';
/** What the agent sends: the proto's messages, with what it may leave out optional. */
export type WireParams = Partial<WireAttestParams>;
export type WireAnswer = Partial<WireChallengeResponse>;
export type { WireEntry, WireX509SvidResult } from '../../proto/node-api.js';
export type WireSyncEntries = WireSyncEntriesResponse;

/** A call the server refused (reason from its `keel-reason` trailer) or that failed on the way. */
export class NodeApiError extends Error {
  override readonly name = 'NodeApiError';
  constructor(
    /** The server's reason code (e.g. `policy`, `nonce-expired`), or `transport` when the call failed before an answer. */
    readonly reason: string,
    readonly code: grpc.status,
    readonly detail: string,
  ) {
    super(`node API refused (${reason}): ${detail}`);
  }

  static from(e: unknown): NodeApiError {
    if (e instanceof NodeApiError) return e;
    const se = e as Partial<grpc.ServiceError>;
    const reason = se.metadata?.get('keel-reason')[0];
    return new NodeApiError(typeof reason === 'string' ? reason : 'transport', se.code ?? grpc.status.UNKNOWN, se.details ?? (e as Error)?.message ?? String(e));
  }
}

export interface NodeApiClientOptions {
  /** `host:port` of the server's Node API. */
  readonly address: string;
  /** PEM certificates the server's SVID must chain to (bootstrap trust, then the bundle). */
  readonly serverCaBundle: string | Buffer;
  /** The server's trust domain: its SVID must be `spiffe://<td>/keel/server`. */
  readonly trustDomain: string;
  /** The agent SVID and its (TPM-resident) key: every connection is bound to it. Absent: anonymous (Attest only). */
  readonly clientSvid?: AgentCredential;
  /** Per-call deadline (default 30 s). */
  readonly deadlineMs?: number;
  readonly maxMessageBytes?: number;
  /** Clock skew tolerated when checking the server's certificate (ms). */
  readonly clockToleranceMs?: number;
}

export type ExchangeMethod = 'Attest' | 'RenewAgent' | 'Check';
/** Runs one challenge exchange (NodeApiClient.exchange, NodeSession.exchange). */
export type Exchange = (method: ExchangeMethod, params: WireParams, answer: (challenge: WireChallenge) => Promise<WireAnswer>) => Promise<WireAttestResult>;
type GrpcClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export class NodeApiClient {
  readonly #client: GrpcClient;
  readonly #deadlineMs: number;

  readonly #creds: BoundChannelCredentials;

  constructor(o: NodeApiClientOptions) {
    const trust = Buffer.from(o.serverCaBundle).toString('utf8');
    const svid = o.clientSvid;
    this.#creds = new BoundChannelCredentials({
      trustPem: () => trust,
      serverId: `spiffe://${o.trustDomain}/keel/server`,
      ...(svid ? { credential: () => svid } : {}),
      clockToleranceMs: o.clockToleranceMs ?? 0,
    });
    const Ctor = nodeApiClientConstructor();
    this.#client = new Ctor(o.address, this.#creds, {
      'grpc.default_authority': o.address,
      'grpc.max_receive_message_length': o.maxMessageBytes ?? 64 * 1024 * 1024,
      'grpc.max_send_message_length': o.maxMessageBytes ?? 64 * 1024 * 1024,
      'grpc.use_local_subchannel_pool': 1,
    }) as unknown as GrpcClient;
    this.#deadlineMs = o.deadlineMs ?? 30_000;
  }

  /** A failure, with the server's reason when it refused the connection itself (the binding). */
  #error(e: unknown): NodeApiError {
    const err = NodeApiError.from(e);
    const refusal = this.#creds.lastRefusal;
    if (err.reason === 'transport' && refusal) return new NodeApiError(refusal.reason, grpc.status.UNAUTHENTICATED, refusal.detail);
    return this.#creds.localFailureOf(err);
  }

  #deadline(): grpc.CallOptions {
    return { deadline: Date.now() + this.#deadlineMs };
  }

  /**
   * One challenge round trip of Attest or RenewAgent: sends `params`, hands
   * the challenge to `answer`, sends what it returns, resolves with the result.
   */
  exchange(method: ExchangeMethod, params: WireParams, answer: (challenge: WireChallenge) => Promise<WireAnswer>): Promise<WireAttestResult> {
    return runExchange(this.#client, method, params, answer, this.#deadline(), (e) => this.#error(e));
  }

  /** Streams the agent's authorized entries and bundles; returns the cancel function. */
  syncEntries(onUpdate: (u: WireSyncEntries) => void, onError: (e: NodeApiError) => void): () => void {
    const call = this.#client.SyncEntries!({}) as grpc.ClientReadableStream<WireSyncEntries>;
    call.on('data', onUpdate);
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code !== grpc.status.CANCELLED) onError(this.#error(e));
    });
    return () => call.cancel();
  }

  signX509Svids(requests: readonly { entryId: string; csr: Buffer }[]): Promise<WireX509SvidResult[]> {
    return new Promise((resolve, reject) => {
      this.#client.SignX509Svids!(
        { requests: requests.map((r) => ({ entry_id: r.entryId, csr: r.csr })) },
        this.#deadline(),
        (err: grpc.ServiceError | null, res: { results: WireX509SvidResult[] }) => (err ? reject(this.#error(err)) : resolve(res.results)),
      );
    });
  }

  signJwtSvid(entryId: string, audience: readonly string[]): Promise<{ token: string; expiresAt: Date }> {
    return new Promise((resolve, reject) => {
      this.#client.SignJwtSvid!(
        { entry_id: entryId, audience: [...audience] },
        this.#deadline(),
        (err: grpc.ServiceError | null, res: { token: string; expires_at: number }) =>
          err ? reject(this.#error(err)) : resolve({ token: res.token, expiresAt: new Date(res.expires_at * 1000) }),
      );
    });
  }

  /** SignWitSvid: a WIT-SVID of the entry binding `publicKeyJwk` (JWK JSON with alg). */
  signWitSvid(entryId: string, publicKeyJwk: string): Promise<{ token: string; expiresAt: Date }> {
    return new Promise((resolve, reject) => {
      this.#client.SignWitSvid!(
        { entry_id: entryId, public_key_jwk: publicKeyJwk },
        this.#deadline(),
        (err: grpc.ServiceError | null, res: { token: string; expires_at: number }) =>
          err ? reject(this.#error(err)) : resolve({ token: res.token, expiresAt: new Date(Number(res.expires_at) * 1000) }),
      );
    });
  }

  close(): void {
    this.#client.close();
  }
}

/**
 * One challenge round trip of Attest, RenewAgent or Check on `client`: sends
 * `params`, hands the challenge to `answer`, sends what it returns, resolves
 * with the result.
 */
export function runExchange(
  client: grpc.Client,
  method: ExchangeMethod,
  params: WireParams,
  answer: (challenge: WireChallenge) => Promise<WireAnswer>,
  options: grpc.CallOptions,
  mapError: (e: unknown) => NodeApiError,
): Promise<WireAttestResult> {
  return new Promise((resolve, reject) => {
    const call = (client as GrpcClient)[method]!(new grpc.Metadata(), options) as grpc.ClientDuplexStream<unknown, { step?: string; challenge?: WireChallenge; result?: WireAttestResult }>;
    let settled = false;
    const finish = (err: unknown, result?: WireAttestResult, local = false): void => {
      if (settled) return;
      settled = true;
      if (err) {
        call.cancel();
        // A failure of our own answer (the TPM, the event log) is reported as
        // itself, not as a failed call to the server.
        reject(local ? err : mapError(err));
      } else resolve(result!);
    };
    call.on('data', (msg) => {
      if (msg.step === 'challenge' && msg.challenge) {
        answer(msg.challenge).then(
          (a) => call.write({ challenge_response: a }),
          (e) => finish(e, undefined, true),
        );
      } else if (msg.step === 'result' && msg.result) {
        finish(null, msg.result);
      } else finish(new NodeApiError('malformed', grpc.status.INTERNAL, `unexpected message ${msg.step ?? '(empty)'} from the server`));
    });
    call.on('error', (e) => finish(e));
    call.on('end', () => finish(new NodeApiError('transport', grpc.status.UNAVAILABLE, 'the server ended the stream without a result')));
    call.write({ params });
  });
}
