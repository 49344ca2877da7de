/**
 * The agent's side of keel's Node API: a gRPC channel over TLS that trusts
 * the configured bundle and accepts only the server's SPIFFE ID
 * (`spiffe://<td>/keel/server`), with the agent SVID as client certificate
 * once it has one. Refusals come back as NodeApiError with the server's reason.
 */
import * as grpc from '@grpc/grpc-js';
import { BoundChannelCredentials, type ServerCaEndorsement } from './bound-credentials.js';
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
  /** The server's CA was new to this agent and accepted through a rollover certificate. */
  readonly onServerCaEndorsed?: (e: ServerCaEndorsement) => void;
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
      ...(o.onServerCaEndorsed ? { onServerCaEndorsed: o.onServerCaEndorsed } : {}),
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
    return this.#creds.failureOf(e);
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
    return signX509SvidsCall(this.#client, requests, this.#deadline(), (e) => this.#error(e));
  }

  signJwtSvid(entryId: string, audience: readonly string[]): Promise<{ token: string; expiresAt: Date }> {
    return signJwtSvidCall(this.#client, entryId, audience, this.#deadline(), (e) => this.#error(e));
  }

  /** SignWitSvid: a WIT-SVID of the entry binding `publicKeyJwk` (JWK JSON with alg). */
  signWitSvid(entryId: string, publicKeyJwk: string): Promise<{ token: string; expiresAt: Date }> {
    return signWitSvidCall(this.#client, entryId, publicKeyJwk, this.#deadline(), (e) => this.#error(e));
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

/** One unary call of the Node API on `client`: the answer, or the failure as `mapError` explains it. */
function unaryCall<Res>(client: grpc.Client, method: string, request: object, options: grpc.CallOptions, mapError: (e: unknown) => NodeApiError): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client as GrpcClient)[method]!(request, options, (err: grpc.ServiceError | null, res: Res) => (err ? reject(mapError(err)) : resolve(res)));
  });
}

interface WireToken {
  readonly token: string;
  readonly expires_at: number;
}
const tokenOf = (res: WireToken): { token: string; expiresAt: Date } => ({ token: res.token, expiresAt: new Date(Number(res.expires_at) * 1000) });

/** SignX509Svids on `client` (NodeApiClient, NodeSession): one result per request. */
export function signX509SvidsCall(
  client: grpc.Client,
  requests: readonly { readonly entryId: string; readonly csr: Buffer }[],
  options: grpc.CallOptions,
  mapError: (e: unknown) => NodeApiError,
): Promise<WireX509SvidResult[]> {
  const request = { requests: requests.map((r) => ({ entry_id: r.entryId, csr: r.csr })) };
  return unaryCall<{ results?: WireX509SvidResult[] }>(client, 'SignX509Svids', request, options, mapError).then((res) => res.results ?? []);
}

/** SignJwtSvid on `client`. */
export function signJwtSvidCall(client: grpc.Client, entryId: string, audience: readonly string[], options: grpc.CallOptions, mapError: (e: unknown) => NodeApiError): Promise<{ token: string; expiresAt: Date }> {
  return unaryCall<WireToken>(client, 'SignJwtSvid', { entry_id: entryId, audience: [...audience] }, options, mapError).then(tokenOf);
}

/** SignWitSvid on `client`: a WIT-SVID of the entry binding `publicKeyJwk` (JWK JSON with alg). */
export function signWitSvidCall(client: grpc.Client, entryId: string, publicKeyJwk: string, options: grpc.CallOptions, mapError: (e: unknown) => NodeApiError): Promise<{ token: string; expiresAt: Date }> {
  return unaryCall<WireToken>(client, 'SignWitSvid', { entry_id: entryId, public_key_jwk: publicKeyJwk }, options, mapError).then(tokenOf);
}
