/**
 * The client side of the tests: @grpc/grpc-js with proto-loader on
 * proto/workload.proto, as any Node workload would use it.
 */
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { PROTO_LOADER_OPTIONS, workloadProtoPath } from '../../src/agent/workload/proto.js';

export interface X509Svid {
  spiffe_id: string;
  x509_svid: Buffer;
  x509_svid_key: Buffer;
  bundle: Buffer;
  hint: string;
}
export interface X509SvidResponse {
  svids: X509Svid[];
  crl: Buffer[];
  federated_bundles: Record<string, Buffer>;
}
export interface BundlesResponse {
  bundles: Record<string, Buffer>;
}

type UnaryCallback = (err: grpc.ServiceError | null, res: unknown) => void;
type Unary = {
  (req: object, md: grpc.Metadata, cb: UnaryCallback): grpc.ClientUnaryCall;
  (req: object, md: grpc.Metadata, options: grpc.CallOptions, cb: UnaryCallback): grpc.ClientUnaryCall;
};
type ServerStream = (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<unknown>;

export interface WorkloadClient extends grpc.Client {
  FetchX509SVID: ServerStream;
  FetchX509Bundles: ServerStream;
  FetchJWTBundles: ServerStream;
  FetchWITSVID: ServerStream;
  FetchWITBundles: ServerStream;
  FetchJWTSVID: Unary;
  ValidateJWTSVID: Unary;
}

const Ctor = (() => {
  const pkg = grpc.loadPackageDefinition(loadSync(workloadProtoPath(), PROTO_LOADER_OPTIONS));
  return pkg.SpiffeWorkloadAPI as unknown as new (target: string, creds: grpc.ChannelCredentials, opts?: object) => WorkloadClient;
})();

/** A client with its own connection: grpc-js otherwise shares one connection among all channels to the same target. */
export function workloadClient(socketPath: string): WorkloadClient {
  return new Ctor(`unix://${socketPath}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
}

/** The security header: absent (null), one value, or several. */
export function header(values: string | readonly string[] | null = 'true'): grpc.Metadata {
  const md = new grpc.Metadata();
  if (values === null) return md;
  for (const v of typeof values === 'string' ? [values] : values) md.add('workload.spiffe.io', v);
  return md;
}

/** One unary call; `options` are grpc-js call options (e.g. a deadline). */
export function unary<T>(client: WorkloadClient, method: 'FetchJWTSVID' | 'ValidateJWTSVID', req: object, md = header(), options: grpc.CallOptions = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method](req, md, options, (err, res) => (err ? reject(err) : resolve(res as T)));
  });
}

/**
 * Reads a server stream message by message: `next()` resolves with the next
 * message or rejects with the stream's error status.
 */
export class StreamReader<T> {
  readonly #queue: T[] = [];
  readonly #waiters: { resolve: (v: T) => void; reject: (e: Error) => void }[] = [];
  #error: grpc.ServiceError | undefined;
  #ended = false;

  constructor(readonly call: grpc.ClientReadableStream<unknown>) {
    call.on('data', (m: T) => {
      const w = this.#waiters.shift();
      if (w) w.resolve(m);
      else this.#queue.push(m);
    });
    call.on('error', (e: grpc.ServiceError) => {
      this.#error = e;
      for (const w of this.#waiters.splice(0)) w.reject(e);
    });
    call.on('end', () => {
      this.#ended = true;
      for (const w of this.#waiters.splice(0)) w.reject(new Error('stream ended'));
    });
  }

  next(timeoutMs = 10_000): Promise<T> {
    const m = this.#queue.shift();
    if (m !== undefined) return Promise.resolve(m);
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.reject(new Error('stream ended'));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no message within ${timeoutMs} ms`)), timeoutMs);
      this.#waiters.push({
        resolve: (v) => (clearTimeout(t), resolve(v)),
        reject: (e) => (clearTimeout(t), reject(e)),
      });
    });
  }

  /** Messages received and not yet taken. */
  get buffered(): number {
    return this.#queue.length;
  }

  cancel(): void {
    this.call.cancel();
  }
}

/** The first message of a server stream, which is then cancelled. */
export async function firstOf<T>(call: grpc.ClientReadableStream<unknown>): Promise<T> {
  const r = new StreamReader<T>(call);
  try {
    return await r.next();
  } finally {
    r.cancel();
  }
}

/** The status a call failed with; throws when it succeeded. */
export async function statusOf(p: Promise<unknown>): Promise<grpc.ServiceError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!e) throw new Error('the call succeeded');
  return e as grpc.ServiceError;
}

const tmpDirs: string[] = [];
// Registered while the importing test file is collected: runs after that file's tests.
afterAll(() => {
  for (const d of tmpDirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A fresh socket path under a directory other uids can traverse (mkdtemp makes it 0700); removed after the test file. */
export function tmpSocketPath(): string {
  const dir = mkdtempSync(join(tmpdir(), 'keel-wl-'));
  tmpDirs.push(dir);
  chmodSync(dir, 0o755);
  return join(dir, 'public', 'api.sock');
}

/** Polls `cond` until it holds (events in another process or the event loop), or fails after `ms`. */
export async function until(cond: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
