/**
 * A SPIFFE Workload API client for the `keel agent api` commands: grpc-js on
 * the agent's socket, the security header on every call. The socket comes
 * from --socket, else SPIFFE_ENDPOINT_SOCKET, else keel's default.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { isAbsolute } from 'node:path';
import { DEFAULT_WORKLOAD_API_SOCKET } from '../../config/agent-schema.js';
import { PROTO_LOADER_OPTIONS, workloadProtoPath } from '../../agent/workload/proto.js';
import { CliError } from '../command.js';

export type { X509SvidMessage, X509SvidResponse } from '../../agent/workload/messages.js';
import type { X509SvidResponse } from '../../agent/workload/messages.js';
export interface JwtSvidResponse {
  svids: { spiffe_id: string; svid: string; hint: string }[];
}
export interface ValidateJwtSvidResponse {
  spiffe_id: string;
  claims: unknown;
}

type Unary = (req: object, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientUnaryCall;
type ServerStream = (req: object, md: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;

interface RawClient extends grpc.Client {
  FetchX509SVID: ServerStream;
  FetchX509Bundles: ServerStream;
  FetchJWTBundles: ServerStream;
  FetchJWTSVID: Unary;
  ValidateJWTSVID: Unary;
}

let ctor: (new (target: string, creds: grpc.ChannelCredentials, opts?: object) => RawClient) | undefined;

/**
 * The gRPC target of the Workload API: `--socket` (a path or a `unix:` URI),
 * else SPIFFE_ENDPOINT_SOCKET (`unix:///path` or `tcp://IP:port`), else keel's default path.
 */
export function workloadTarget(socketFlag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  const raw = socketFlag ?? env.SPIFFE_ENDPOINT_SOCKET ?? DEFAULT_WORKLOAD_API_SOCKET;
  const from = socketFlag !== undefined ? '--socket' : env.SPIFFE_ENDPOINT_SOCKET !== undefined ? 'SPIFFE_ENDPOINT_SOCKET' : 'the default';
  if (raw.startsWith('unix://')) {
    const path = raw.slice('unix://'.length);
    if (!isAbsolute(path)) throw new CliError(`${from}: a unix socket address is unix:///absolute/path, got ${JSON.stringify(raw)}`, 2);
    return `unix://${path}`;
  }
  if (raw.startsWith('unix:')) throw new CliError(`${from}: write unix:///absolute/path, got ${JSON.stringify(raw)}`, 2);
  const tcp = /^tcp:\/\/(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):(\d{1,5})$/.exec(raw);
  if (tcp) return `${tcp[1]}:${tcp[2]}`;
  if (raw.includes('://')) throw new CliError(`${from}: expected unix:///path or tcp://IP:port, got ${JSON.stringify(raw)}`, 2);
  if (!isAbsolute(raw) && socketFlag === undefined) throw new CliError(`${from}: expected unix:///path, got ${JSON.stringify(raw)}`, 2);
  return `unix://${raw}`;
}

export class WorkloadApiClient {
  readonly #client: RawClient;

  constructor(readonly target: string) {
    ctor ??= grpc.loadPackageDefinition(loadSync(workloadProtoPath(), PROTO_LOADER_OPTIONS)).SpiffeWorkloadAPI as unknown as typeof ctor;
    this.#client = new ctor!(target, grpc.credentials.createInsecure());
  }

  static #header(): grpc.Metadata {
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    return md;
  }

  /** Opens the FetchX509SVID stream. */
  watchX509Svids(): grpc.ClientReadableStream<X509SvidResponse> {
    return this.#client.FetchX509SVID({}, WorkloadApiClient.#header()) as grpc.ClientReadableStream<X509SvidResponse>;
  }

  watchX509Bundles(): grpc.ClientReadableStream<unknown> {
    return this.#client.FetchX509Bundles({}, WorkloadApiClient.#header());
  }

  /** The first message of a stream, or its error; the stream is cancelled after. */
  static first<T>(call: grpc.ClientReadableStream<unknown>, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        call.cancel();
        reject(new CliError(`no answer from the Workload API within ${timeoutMs} ms`));
      }, timeoutMs);
      call.once('data', (m: T) => {
        clearTimeout(t);
        resolve(m);
        call.cancel();
      });
      call.once('error', (e: grpc.ServiceError) => {
        clearTimeout(t);
        reject(e);
      });
      call.once('end', () => {
        clearTimeout(t);
        reject(new CliError('the Workload API ended the stream without an answer'));
      });
    });
  }

  fetchX509Svids(timeoutMs: number): Promise<X509SvidResponse> {
    return WorkloadApiClient.first(this.watchX509Svids(), timeoutMs);
  }

  fetchJwtSvids(audience: readonly string[], spiffeId: string | undefined, timeoutMs: number): Promise<JwtSvidResponse> {
    return this.#unary('FetchJWTSVID', { audience: [...audience], spiffe_id: spiffeId ?? '' }, timeoutMs);
  }

  validateJwtSvid(audience: string, svid: string, timeoutMs: number): Promise<ValidateJwtSvidResponse> {
    return this.#unary('ValidateJWTSVID', { audience, svid }, timeoutMs);
  }

  #unary<T>(method: 'FetchJWTSVID' | 'ValidateJWTSVID', req: object, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      this.#client[method](req, WorkloadApiClient.#header(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res as T)));
    });
  }

  close(): void {
    this.#client.close();
  }
}

/** A failed call in words: the status name and the agent's message. */
export function describeRpcError(e: unknown): string {
  const se = e as Partial<grpc.ServiceError>;
  if (typeof se?.code === 'number') return `${grpc.status[se.code] ?? se.code}: ${se.details ?? ''}`;
  return (e as Error)?.message ?? String(e);
}

/** google.protobuf.Struct (as proto-loader gives it) → plain JSON. */
export function structToJson(v: unknown): unknown {
  const val = v as Record<string, unknown> | null | undefined;
  if (!val || typeof val !== 'object') return val;
  if ('fields' in val && val.fields && typeof val.fields === 'object') {
    return Object.fromEntries(Object.entries(val.fields as Record<string, unknown>).map(([k, x]) => [k, valueToJson(x)]));
  }
  return val;
}

function valueToJson(v: unknown): unknown {
  const val = v as Record<string, unknown>;
  switch (val?.kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
    case 'stringValue':
    case 'boolValue':
      return val[val.kind];
    case 'structValue':
      return structToJson(val.structValue);
    case 'listValue':
      return ((val.listValue as { values?: unknown[] })?.values ?? []).map(valueToJson);
  }
  // Without oneof names, take whichever member is set.
  for (const k of ['stringValue', 'numberValue', 'boolValue'] as const) if (val?.[k] !== undefined && val[k] !== null) return val[k];
  if (val?.structValue) return structToJson(val.structValue);
  if (val?.listValue) return ((val.listValue as { values?: unknown[] }).values ?? []).map(valueToJson);
  return null;
}
