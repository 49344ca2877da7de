/**
 * The agent's side of keel's Node API: a gRPC channel over TLS that trusts
 * the configured bundle and accepts only the server's SPIFFE ID
 * (`spiffe://<td>/keel/server`), with the agent SVID as client certificate
 * once it has one. Refusals come back as NodeApiError with the server's reason.
 */
import type { KeyObject } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
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
  /** The agent SVID for the mTLS calls: chain PEM (leaf first) and its key. */
  readonly clientSvid?: { readonly chainPem: string; readonly key: KeyObject };
  /** Per-call deadline (default 30 s). */
  readonly deadlineMs?: number;
  readonly maxMessageBytes?: number;
}

type ExchangeMethod = 'Attest' | 'RenewAgent';
type GrpcClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export class NodeApiClient {
  readonly #client: GrpcClient;
  readonly #deadlineMs: number;

  constructor(o: NodeApiClientOptions) {
    const serverId = `spiffe://${o.trustDomain}/keel/server`;
    const creds = grpc.credentials.createSsl(
      Buffer.from(o.serverCaBundle),
      o.clientSvid ? Buffer.from(o.clientSvid.key.export({ type: 'pkcs8', format: 'pem' })) : null,
      o.clientSvid ? Buffer.from(o.clientSvid.chainPem) : null,
      {
        // The chain is checked against the bundle by TLS; the name is the SPIFFE ID, not a host name.
        checkServerIdentity: (_host: string, cert: PeerCertificate) => {
          const uris = (cert.subjectaltname ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
          return uris.length === 1 && uris[0] === serverId ? undefined : new Error(`the server presented ${uris.join(', ') || 'no SPIFFE ID'}, not ${serverId}`);
        },
      },
    );
    const Ctor = nodeApiClientConstructor();
    this.#client = new Ctor(o.address, creds, {
      // SNI must be a host name, not an IP (RFC 6066); the server's SVID is checked by SPIFFE ID above.
      'grpc.ssl_target_name_override': 'keel-server',
      'grpc.default_authority': o.address,
      'grpc.max_receive_message_length': o.maxMessageBytes ?? 64 * 1024 * 1024,
      'grpc.max_send_message_length': o.maxMessageBytes ?? 64 * 1024 * 1024,
    }) as unknown as GrpcClient;
    this.#deadlineMs = o.deadlineMs ?? 30_000;
  }

  #deadline(): grpc.CallOptions {
    return { deadline: Date.now() + this.#deadlineMs };
  }

  /**
   * One challenge round trip of Attest or RenewAgent: sends `params`, hands
   * the challenge to `answer`, sends what it returns, resolves with the result.
   */
  exchange(method: ExchangeMethod, params: WireParams, answer: (challenge: WireChallenge) => Promise<WireAnswer>): Promise<WireAttestResult> {
    return new Promise((resolve, reject) => {
      const call = this.#client[method]!(new grpc.Metadata(), this.#deadline()) as grpc.ClientDuplexStream<unknown, { step?: string; challenge?: WireChallenge; result?: WireAttestResult }>;
      let settled = false;
      const finish = (err: unknown, result?: WireAttestResult): void => {
        if (settled) return;
        settled = true;
        if (err) {
          call.cancel();
          reject(NodeApiError.from(err));
        } else resolve(result!);
      };
      call.on('data', (msg) => {
        if (msg.step === 'challenge' && msg.challenge) {
          answer(msg.challenge).then(
            (a) => call.write({ challenge_response: a }),
            (e) => finish(e),
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

  /** Streams the agent's authorized entries and bundles; returns the cancel function. */
  syncEntries(onUpdate: (u: WireSyncEntries) => void, onError: (e: NodeApiError) => void): () => void {
    const call = this.#client.SyncEntries!({}) as grpc.ClientReadableStream<WireSyncEntries>;
    call.on('data', onUpdate);
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code !== grpc.status.CANCELLED) onError(NodeApiError.from(e));
    });
    return () => call.cancel();
  }

  signX509Svids(requests: readonly { entryId: string; csr: Buffer }[]): Promise<WireX509SvidResult[]> {
    return new Promise((resolve, reject) => {
      this.#client.SignX509Svids!(
        { requests: requests.map((r) => ({ entry_id: r.entryId, csr: r.csr })) },
        this.#deadline(),
        (err: grpc.ServiceError | null, res: { results: WireX509SvidResult[] }) => (err ? reject(NodeApiError.from(err)) : resolve(res.results)),
      );
    });
  }

  signJwtSvid(entryId: string, audience: readonly string[]): Promise<{ token: string; expiresAt: Date }> {
    return new Promise((resolve, reject) => {
      this.#client.SignJwtSvid!(
        { entry_id: entryId, audience: [...audience] },
        this.#deadline(),
        (err: grpc.ServiceError | null, res: { token: string; expires_at: number }) =>
          err ? reject(NodeApiError.from(err)) : resolve({ token: res.token, expiresAt: new Date(res.expires_at * 1000) }),
      );
    });
  }

  close(): void {
    this.#client.close();
  }
}
