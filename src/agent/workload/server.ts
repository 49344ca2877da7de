/**
 * The SPIFFE Workload API (SPIFFE_Workload_API.md, SPIFFE_Workload_Endpoint.md)
 * on a Unix socket. Each call is judged by the kernel's record of the process
 * that opened the connection carrying it (see connection-identity.ts), that
 * process is attested from /proc, and the answer is sent only if the process
 * is still the same one (same pid, start time and executable as when the
 * connection was accepted) when the answer is ready. Connections and streams
 * are bounded per uid and in total (limits.ts).
 */
import type { Server as NetServer, Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { JwtSvidError } from '../../spiffe/errors.js';
import { InvalidSpiffeIdError } from '../../spiffe/errors.js';
import { SpiffeId } from '../../spiffe/id.js';
import { peerCredentialsOf, type PeerCredentials } from '../../os/peercred.js';
import { uptimeTicks, WorkloadAttestor, type ProcessImage, type WorkloadAttestation } from './attestor.js';
import { ConnectionIdentities, type ConnectionIdentity } from './connection-identity.js';
import { WorkloadAttestationError } from './errors.js';
import { connectionOverLimit, DEFAULT_LIMITS, DropTally, REFUSING_GRACE_MS, REFUSING_MAX, UidCounts, type WorkloadApiLimits } from './limits.js';
import type { Identity, IdentitySource, MatchedEntry, Unsubscribe, WorkloadLookup } from './identity-source.js';
import { jwtBundlesResponse, toStruct, x509BundlesResponse, x509SvidResponse } from './messages.js';
import { witBundlesResponse, type WitSvidMessage } from './wit.js';
import { workloadServiceDefinition } from './proto.js';
import { formatSelector, selectorSetKey } from './selectors.js';
import { listenUnixSocket } from './uds-listener.js';

export const SECURITY_HEADER = 'workload.spiffe.io';

/** What the CA signs (src/server/ca/authority.ts): more is the caller's error, not an outage. */
export const MAX_JWT_AUDIENCES = 16;
export const MAX_JWT_AUDIENCE_CHARS = 1024;
/** Per connection; each stream also counts against the uid's stream limit. */
const MAX_CONCURRENT_STREAMS_PER_CONNECTION = 100;

export type WorkloadRpc =
  | 'FetchX509SVID'
  | 'FetchX509Bundles'
  | 'FetchJWTSVID'
  | 'FetchJWTBundles'
  | 'ValidateJWTSVID'
  | 'FetchWITSVID'
  | 'FetchWITBundles';

/** One line of the audit log: every identity issued or refused, who asked and why. */
export interface WorkloadAuditEvent {
  readonly time: string;
  /** 'connection' for refusals of a connection itself (limits, no peer credentials). */
  readonly rpc: WorkloadRpc | 'connection';
  readonly outcome: 'issued' | 'refused';
  /** gRPC status name when refused (PERMISSION_DENIED, UNAVAILABLE, …). */
  readonly code?: string;
  readonly pid?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly spiffeIds?: readonly string[];
  readonly selectors?: readonly string[];
  readonly reason?: string;
}

export interface WorkloadApiServerOptions {
  readonly socketPath: string;
  readonly source: IdentitySource;
  /** Default: a WorkloadAttestor that hashes executables only when some entry uses unix:sha256. */
  readonly attestor?: WorkloadAttestor;
  /** Serve bundles (and ValidateJWTSVID) to callers that match no entry, as SPIRE's allow_unauthenticated_verifiers. */
  readonly allowUnauthenticatedVerifiers?: boolean;
  /** Where audit events go; default one JSON line each on stderr. */
  readonly audit?: (event: WorkloadAuditEvent) => void;
  /**
   * A connection with no call for this long is closed (default 5 minutes).
   * Clients reconnect transparently; it also reclaims connections whose HTTP/2
   * session ended (e.g. a GOAWAY) but whose client never closed the socket.
   */
  readonly idleConnectionTimeoutMs?: number;
  /** Connection and stream limits (defaults: limits.ts DEFAULT_LIMITS). */
  readonly limits?: Partial<WorkloadApiLimits>;
}

export interface WorkloadApiServer {
  readonly socketPath: string;
  /** FetchX509SVID / FetchX509Bundles / FetchJWTBundles streams currently open. */
  readonly openStreams: number;
  /** Accepted connections not yet closed (those being refused over a limit included). */
  readonly openConnections: number;
  /** Served connections (not over a limit) of `uid`. */
  connectionsOf(uid: number): number;
  /** Open streams of `uid`. */
  streamsOf(uid: number): number;
  /** Stops accepting, ends every stream with UNAVAILABLE, closes connections (forcibly after `graceMs`) and removes the socket file. */
  stop(graceMs?: number): Promise<void>;
}

/** A refusal with the gRPC status it is answered with. */
class RpcRefusal extends Error {
  override readonly name = 'RpcRefusal';
  constructor(
    readonly code: grpc.status,
    readonly details: string,
    /** For the audit line only, never sent to the caller. */
    readonly auditReason: string = details,
  ) {
    super(details);
  }
}

const NO_IDENTITY = 'no identity issued';
/** A WIT-SVID renewal that failed is tried again this much later (the tokens sent stay valid meanwhile). */
const WIT_RETRY_MS = 5_000;
/** The soonest the WIT tokens of a stream are looked at again. */
const WIT_MIN_LOOK_MS = 250;

interface Caller {
  readonly conn: ConnectionIdentity;
  readonly attestation: WorkloadAttestation;
  /** Canonical selector-set key: callers with the same selectors share computed answers. */
  readonly key: string;
}

type StreamKind = 'x509svid' | 'x509bundles' | 'jwtbundles' | 'witsvid' | 'witbundles';
type Answer = { readonly bytes: Buffer; readonly spiffeIds: readonly string[] } | { readonly refusal: RpcRefusal };

interface OpenStream {
  readonly kind: StreamKind;
  readonly rpc: WorkloadRpc;
  readonly caller: Caller;
  readonly call: grpc.ServerWritableStream<unknown, unknown>;
  last: Buffer | undefined;
  running: boolean;
  dirty: boolean;
  closed: boolean;
  /** FetchWITSVID: the SPIFFE ID asked for ('' for all), and the timer that renews the tokens sent. */
  witSpiffeId?: string;
  witRefresh?: NodeJS.Timeout;
}

const statusName = (code: grpc.status): string => grpc.status[code] ?? String(code);

function defaultAudit(e: WorkloadAuditEvent): void {
  process.stderr.write(`${JSON.stringify({ audit: 'workload-api', ...e })}\n`);
}

function hasSecurityHeader(md: grpc.Metadata): boolean {
  const values = md.get(SECURITY_HEADER);
  return values.length === 1 && values[0] === 'true';
}

/** Resolves when the stream can take more data or is gone; leaves no listener behind. */
function drained(call: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      call.off('drain', done);
      call.off('close', done);
      resolve();
    };
    call.on('drain', done);
    call.on('close', done);
  });
}

class WorkloadApi implements WorkloadApiServer {
  readonly #source: IdentitySource;
  readonly #attestor: WorkloadAttestor;
  readonly #allowUnauthenticated: boolean;
  readonly #audit: (e: WorkloadAuditEvent) => void;
  readonly #connections = new ConnectionIdentities();
  readonly #sockets = new Set<Socket>();
  readonly #streams = new Set<OpenStream>();
  readonly #limits: WorkloadApiLimits;
  /** Served connections per uid (over-limit ones are not counted). */
  readonly #connCounts = new UidCounts();
  readonly #streamCounts = new UidCounts();
  readonly #drops = new DropTally();
  #refusing = 0;
  /** Serialized answers of the current source generation, by stream kind and selector set. */
  readonly #answers = new Map<string, Answer>();
  readonly #grpc: grpc.Server;
  readonly #injector: grpc.ConnectionInjector;
  readonly #serialize: Record<StreamKind, (v: object) => Buffer>;
  #netServer: NetServer | undefined;
  #unsubscribe: Unsubscribe | undefined;
  #stopping: Promise<void> | undefined;

  constructor(
    readonly socketPath: string,
    o: WorkloadApiServerOptions,
  ) {
    this.#source = o.source;
    this.#attestor = o.attestor ?? new WorkloadAttestor({ wants: (kind) => o.source.usesSelectorKind(kind) });
    this.#allowUnauthenticated = o.allowUnauthenticatedVerifiers ?? false;
    this.#audit = o.audit ?? defaultAudit;
    this.#limits = { ...DEFAULT_LIMITS, ...o.limits };
    this.#grpc = new grpc.Server({
      'grpc.max_connection_idle_ms': o.idleConnectionTimeoutMs ?? 300_000,
      'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS_PER_CONNECTION,
    });

    const def = workloadServiceDefinition();
    const method = (name: WorkloadRpc): grpc.MethodDefinition<object, object> => def[name] as grpc.MethodDefinition<object, object>;
    // Stream answers are serialized once per change and shared by every stream
    // that gets the same answer; the service writes those bytes as they are.
    const passBytes = (d: grpc.MethodDefinition<object, object>) => ({
      ...d,
      responseSerialize: (v: object): Buffer => (Buffer.isBuffer(v) ? v : d.responseSerialize(v)),
    });
    this.#serialize = {
      x509svid: method('FetchX509SVID').responseSerialize,
      x509bundles: method('FetchX509Bundles').responseSerialize,
      jwtbundles: method('FetchJWTBundles').responseSerialize,
      witsvid: method('FetchWITSVID').responseSerialize,
      witbundles: method('FetchWITBundles').responseSerialize,
    };
    const service: grpc.ServiceDefinition = {
      ...def,
      FetchX509SVID: passBytes(method('FetchX509SVID')),
      FetchX509Bundles: passBytes(method('FetchX509Bundles')),
      FetchJWTBundles: passBytes(method('FetchJWTBundles')),
      FetchWITSVID: passBytes(method('FetchWITSVID')),
      FetchWITBundles: passBytes(method('FetchWITBundles')),
    };
    this.#grpc.addService(service, {
      FetchX509SVID: (call: grpc.ServerWritableStream<unknown, unknown>) => void this.#openStream('FetchX509SVID', 'x509svid', call),
      FetchX509Bundles: (call: grpc.ServerWritableStream<unknown, unknown>) => void this.#openStream('FetchX509Bundles', 'x509bundles', call),
      FetchJWTBundles: (call: grpc.ServerWritableStream<unknown, unknown>) => void this.#openStream('FetchJWTBundles', 'jwtbundles', call),
      FetchJWTSVID: (call: grpc.ServerUnaryCall<JwtSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        void this.#unary('FetchJWTSVID', call, cb, (c) => this.#fetchJwtSvid(call.request, c, deadlineOf(call)), () => checkAudience(call.request)),
      ValidateJWTSVID: (call: grpc.ServerUnaryCall<ValidateRequest, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        void this.#unary('ValidateJWTSVID', call, cb, (c) => this.#validateJwtSvid(call.request, c), () => this.#checkValidateRequest(call.request)),
      // The WIT-SVID profile, when the identity source can mint WITs; Unimplemented otherwise (as the standard says).
      FetchWITSVID: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        this.#source.fetchWitSvid ? void this.#openStream('FetchWITSVID', 'witsvid', call) : this.#unimplemented('FetchWITSVID', call),
      FetchWITBundles: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        this.#source.fetchWitSvid ? void this.#openStream('FetchWITBundles', 'witbundles', call) : this.#unimplemented('FetchWITBundles', call),
    });
    this.#injector = this.#grpc.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  }

  get openStreams(): number {
    return this.#streams.size;
  }

  get openConnections(): number {
    return this.#sockets.size;
  }

  connectionsOf(uid: number): number {
    return this.#connCounts.of(uid);
  }

  streamsOf(uid: number): number {
    return this.#streamCounts.of(uid);
  }

  async listen(): Promise<void> {
    this.#unsubscribe = this.#source.subscribe(() => this.#onSourceChange());
    try {
      this.#netServer = await listenUnixSocket(this.socketPath, (s) => this.#accept(s));
    } catch (e) {
      this.#unsubscribe();
      this.#injector.destroy();
      throw e;
    }
    // After listening, an error (EMFILE on accept, …) must not crash the agent.
    this.#netServer.on('error', (e) => this.#audit({ time: new Date().toISOString(), rpc: 'connection', outcome: 'refused', reason: `listener error: ${e.message}` }));
  }

  #accept(socket: Socket): void {
    if (this.#stopping) {
      socket.destroy();
      return;
    }
    // As close to accept as we can: a process younger than this did not open the connection.
    const acceptedBy = uptimeTicks().catch(() => undefined);
    let peer: PeerCredentials;
    try {
      peer = peerCredentialsOf(socket);
    } catch (e) {
      // Without the kernel's answer the connection cannot be served at all.
      socket.destroy();
      this.#audit({ time: new Date().toISOString(), rpc: 'connection', outcome: 'refused', code: 'UNAVAILABLE', reason: `no peer credentials: ${(e as Error).message}` });
      return;
    }
    const overLimit = connectionOverLimit(this.#limits, this.#connCounts, peer.uid);
    if (overLimit !== undefined) {
      this.#acceptOverLimit(socket, peer, acceptedBy, overLimit);
      return;
    }
    // Right away, synchronously: what the process runs now is what it connected as (docs/agent.md says how close that is).
    let image: ProcessImage | WorkloadAttestationError;
    try {
      image = this.#attestor.imageOf(peer.pid);
    } catch (e) {
      if (!(e instanceof WorkloadAttestationError)) throw e;
      image = e;
    }
    const conn = this.#connections.attach(socket, peer, { acceptedBy, image });
    this.#connCounts.add(peer.uid);
    // A connection that never calls holds memory for nothing; clients connect because they are about to call.
    const firstCall = setTimeout(() => {
      if (conn.calls === 0) socket.destroy();
    }, this.#limits.firstCallTimeoutMs);
    firstCall.unref();
    this.#sockets.add(socket);
    socket.once('close', () => {
      clearTimeout(firstCall);
      this.#sockets.delete(socket);
      this.#connCounts.remove(peer.uid);
    });
    this.#injector.injectConnection(socket);
  }

  /**
   * A connection over a limit: served for a moment so that its calls get
   * RESOURCE_EXHAUSTED, then closed; under a flood (more than REFUSING_MAX
   * such at once) closed at accept, with one audit line per uid per window.
   */
  #acceptOverLimit(socket: Socket, peer: PeerCredentials, acceptedBy: Promise<bigint | undefined>, reason: string): void {
    if (this.#refusing >= REFUSING_MAX) {
      socket.destroy();
      const dropped = this.#drops.drop(peer.uid);
      if (dropped !== undefined) {
        this.#audit({
          time: new Date().toISOString(),
          rpc: 'connection',
          outcome: 'refused',
          code: 'RESOURCE_EXHAUSTED',
          pid: peer.pid,
          uid: peer.uid,
          gid: peer.gid,
          reason: `${reason}; ${dropped} connection(s) of this uid closed at accept since the last report`,
        });
      }
      return;
    }
    const refusal = new WorkloadAttestationError('process-gone', peer.pid, 'not examined: the connection is over a limit');
    this.#connections.attach(socket, peer, { acceptedBy, image: refusal, overLimit: reason });
    this.#refusing++;
    const timer = setTimeout(() => socket.destroy(), REFUSING_GRACE_MS);
    timer.unref();
    this.#sockets.add(socket);
    socket.once('close', () => {
      clearTimeout(timer);
      this.#refusing--;
      this.#sockets.delete(socket);
    });
    this.#injector.injectConnection(socket);
  }

  /** The connection a call came on, counting the call (see the first-call timeout). */
  #connectionOf(call: { getPeer(): string }): ConnectionIdentity | undefined {
    const conn = this.#connections.forPeer(call.getPeer());
    if (conn) conn.calls++;
    return conn;
  }

  /**
   * Header, request (`checkRequest`), connection, attestation: who is calling,
   * or a refusal. `conn`: the call's connection, already counted.
   */
  async #authenticate(call: { metadata: grpc.Metadata }, conn: ConnectionIdentity | undefined, checkRequest?: () => void): Promise<Caller> {
    if (!hasSecurityHeader(call.metadata)) throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, 'security header missing from request');
    checkRequest?.();
    if (!conn) throw new RpcRefusal(grpc.status.UNAVAILABLE, 'the caller could not be identified', 'no peer credentials recorded for the connection');
    if (conn.overLimit !== undefined) throw new RpcRefusal(grpc.status.RESOURCE_EXHAUSTED, 'too many connections', conn.overLimit);
    let attestation: WorkloadAttestation;
    try {
      // The image recorded at accept: when the process could not be examined then, it cannot be judged now.
      if (conn.image instanceof WorkloadAttestationError) throw conn.image;
      attestation = await this.#attestor.attestPid(conn.peer.pid, conn.peer, await conn.acceptedBy, conn.image);
    } catch (e) {
      if (e instanceof WorkloadAttestationError && e.reason === 'exe-changed') {
        throw new RpcRefusal(grpc.status.PERMISSION_DENIED, 'the calling process runs another executable than the one that opened the connection', e.message);
      }
      if (e instanceof WorkloadAttestationError) throw new RpcRefusal(grpc.status.UNAVAILABLE, 'workload attestation failed', e.message);
      throw e;
    }
    return { conn, attestation, key: selectorSetKey(attestation.selectors) };
  }

  /** The last check before anything is sent: the attested process is still the one at the pid, running the same executable. */
  async #ensureSameProcess(caller: Caller): Promise<void> {
    if (!(await this.#attestor.isSameProcess(caller.attestation.stamp))) {
      throw new RpcRefusal(
        grpc.status.PERMISSION_DENIED,
        'the calling process is gone',
        `pid ${caller.attestation.stamp.pid} exited, was reused or exec'd another executable after attestation`,
      );
    }
  }

  #auditEvent(rpc: WorkloadRpc, caller: Caller | undefined, conn: ConnectionIdentity | undefined, rest: Partial<WorkloadAuditEvent>): void {
    const peer = caller?.conn.peer ?? conn?.peer;
    this.#audit({
      time: new Date().toISOString(),
      rpc,
      outcome: 'refused',
      ...(peer ? { pid: peer.pid, uid: peer.uid, gid: peer.gid } : {}),
      ...rest,
    });
  }

  #refused(rpc: WorkloadRpc, caller: Caller | undefined, call: { getPeer(): string }, e: unknown): grpc.StatusObject {
    const r = e instanceof RpcRefusal ? e : new RpcRefusal(grpc.status.INTERNAL, 'internal error', `unexpected: ${(e as Error)?.message ?? String(e)}`);
    this.#auditEvent(rpc, caller, this.#connections.forPeer(call.getPeer()), {
      outcome: 'refused',
      code: statusName(r.code),
      reason: r.auditReason,
      ...(caller ? { selectors: caller.attestation.selectors.map(formatSelector) } : {}),
    });
    return { code: r.code, details: r.details, metadata: new grpc.Metadata() };
  }

  // ---------- unary RPCs ----------

  async #unary<Req>(
    rpc: WorkloadRpc,
    call: grpc.ServerUnaryCall<Req, unknown>,
    cb: grpc.sendUnaryData<unknown>,
    answer: (c: Caller) => Promise<{ response: object; spiffeIds: readonly string[] }>,
    checkRequest?: () => void,
  ): Promise<void> {
    let caller: Caller | undefined;
    // Counted even when refused before attestation (a bad request is still a call).
    const conn = this.#connectionOf(call);
    try {
      caller = await this.#authenticate(call, conn, checkRequest);
      const { response, spiffeIds } = await answer(caller);
      await this.#ensureSameProcess(caller);
      cb(null, response);
      this.#auditEvent(rpc, caller, undefined, { outcome: 'issued', spiffeIds });
    } catch (e) {
      cb(this.#refused(rpc, caller, call, e));
    }
  }

  #lookup(caller: Caller): WorkloadLookup {
    return this.#source.lookup(caller.attestation.selectors);
  }

  /**
   * The caller's matching entries, or the refusal that says why there are
   * none: PermissionDenied only when no entry matches (or the node lost its
   * identity), Unavailable while the agent cannot tell (not in sync with the
   * server). docs/agent.md, "Status codes".
   */
  #entriesOf(caller: Caller): { readonly entries: readonly MatchedEntry[]; readonly identities: readonly Identity[] } {
    const l = this.#lookup(caller);
    if (l.kind === 'matched') return l;
    throw refusalOf(l);
  }

  /**
   * One token (JWT-SVID, WIT-SVID: `what`) per entry of the caller, minted in
   * parallel; only the entries of `spiffeId` when it is given. Tokens need the
   * entry only, not its X.509-SVID (which may still be being signed). A mint
   * that fails is judged again on what the agent knows now: the entry may
   * have gone (left out), or the node lost its identity.
   */
  async #mintEach<T extends object>(caller: Caller, spiffeId: string | undefined, what: string, mint: (entry: MatchedEntry) => Promise<T>): Promise<T[]> {
    let entries = this.#entriesOf(caller).entries;
    if (spiffeId) {
      let wanted: SpiffeId;
      try {
        wanted = SpiffeId.parse(spiffeId);
      } catch (e) {
        if (e instanceof InvalidSpiffeIdError) throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, `spiffe_id: ${e.reason}`);
        throw e;
      }
      entries = entries.filter((i) => i.spiffeId.equals(wanted));
      if (entries.length === 0) {
        throw new RpcRefusal(grpc.status.PERMISSION_DENIED, `no identity issued for ${wanted.toString()}`, `caller asked for ${wanted.toString()}, which it does not hold`);
      }
    }
    const minted = await Promise.all(
      entries.map(async (i) => {
        try {
          return await mint(i);
        } catch (e) {
          const now = this.#lookup(caller);
          if (now.kind === 'denied') throw refusalOf(now);
          if (now.kind === 'matched' && !now.entries.some((m) => m.entryId === i.entryId)) return undefined;
          throw new RpcRefusal(grpc.status.UNAVAILABLE, `could not fetch a ${what}`, `minting for ${i.spiffeId.toString()} failed: ${(e as Error).message}`);
        }
      }),
    );
    const tokens = minted.filter((m) => m !== undefined);
    if (tokens.length === 0) throw new RpcRefusal(grpc.status.PERMISSION_DENIED, NO_IDENTITY, `the matching entries were removed while their ${what}s were minted`);
    return tokens;
  }

  async #fetchJwtSvid(req: JwtSvidRequest, caller: Caller, deadline: number | undefined): Promise<{ response: object; spiffeIds: readonly string[] }> {
    const audience = req.audience ?? [];
    const svids = await this.#mintEach(caller, req.spiffe_id, 'JWT-SVID', async (i) => {
      const jwt = await this.#source.fetchJwtSvid(i.entryId, audience, deadline === undefined ? {} : { deadline });
      return { spiffe_id: i.spiffeId.toString(), svid: jwt.token, hint: i.hint };
    });
    return { response: { svids }, spiffeIds: svids.map((s) => s.spiffe_id) };
  }

  #checkValidateRequest(req: ValidateRequest): void {
    if (!req.audience) throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, 'audience must be specified');
    if (!req.svid) throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, 'svid must be specified');
  }

  async #validateJwtSvid(req: ValidateRequest, caller: Caller): Promise<{ response: object; spiffeIds: readonly string[] }> {
    // Validation reads the trust bundles, so it is open to whoever may read them.
    if (!this.#allowUnauthenticated) this.#entriesOf(caller);
    let validated;
    try {
      validated = await this.#source.validateJwt(req.svid, req.audience);
    } catch (e) {
      if (e instanceof JwtSvidError) throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, e.message);
      throw new RpcRefusal(grpc.status.UNAVAILABLE, 'the token could not be validated', (e as Error).message);
    }
    // A trust-domain ID names the trust domain, never a workload (SPIFFE-ID §2.2): no JWT-SVID has one as sub.
    if (validated.spiffeId.path === '') {
      throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, `sub ${validated.spiffeId.toString()} is a trust domain ID, not the SPIFFE ID of a workload`);
    }
    let claims;
    try {
      claims = toStruct(validated.claims);
    } catch (e) {
      throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, `the token's claims cannot be represented: ${(e as Error).message}`);
    }
    return { response: { spiffe_id: validated.spiffeId.toString(), claims }, spiffeIds: [] };
  }

  #unimplemented(rpc: WorkloadRpc, call: grpc.ServerWritableStream<unknown, unknown>): void {
    this.#connectionOf(call);
    call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: `${rpc} is not supported by this agent (WIT-SVIDs are an optional profile)` });
  }

  // ---------- streams ----------

  async #openStream(rpc: WorkloadRpc, kind: StreamKind, call: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
    let caller: Caller;
    try {
      caller = await this.#authenticate(call, this.#connectionOf(call));
    } catch (e) {
      this.#endStream(call, this.#refused(rpc, undefined, call, e));
      return;
    }
    if (call.cancelled || call.destroyed || this.#stopping) return;
    const uid = caller.conn.peer.uid;
    if (this.#streamCounts.of(uid) >= this.#limits.maxStreamsPerUid) {
      const r = new RpcRefusal(grpc.status.RESOURCE_EXHAUSTED, 'too many streams', `uid ${uid} already holds ${this.#limits.maxStreamsPerUid} streams (the per-uid limit)`);
      this.#endStream(call, this.#refused(rpc, caller, call, r));
      return;
    }
    const st: OpenStream = { kind, rpc, caller, call, last: undefined, running: false, dirty: false, closed: false };
    if (kind === 'witsvid') st.witSpiffeId = (call.request as { spiffe_id?: string } | undefined)?.spiffe_id ?? '';
    this.#streams.add(st);
    this.#streamCounts.add(uid);
    call.once('close', () => {
      st.closed = true;
      clearTimeout(st.witRefresh);
      if (this.#streams.delete(st)) this.#streamCounts.remove(uid);
    });
    await this.#pump(st);
  }

  #endStream(call: grpc.ServerWritableStream<unknown, unknown>, status: Partial<grpc.StatusObject>): void {
    if (call.destroyed || call.writableEnded) return;
    // grpc-js turns an 'error' event on a server stream into the call's final status.
    call.emit('error', status);
  }

  #answer(kind: StreamKind, caller: Caller): Answer {
    const key = `${kind}\u0000${caller.key}`;
    const hit = this.#answers.get(key);
    if (hit) return hit;
    const l = this.#lookup(caller);
    let answer: Answer;
    if (l.kind !== 'matched' && (kind === 'x509svid' || !this.#allowUnauthenticated)) {
      answer = { refusal: refusalOf(l) };
    } else if (kind === 'x509svid' && l.kind === 'matched' && l.identities.length === 0) {
      // Entries match, but none of their X.509-SVIDs is there (being signed, or expired with the server away).
      answer = { refusal: new RpcRefusal(grpc.status.UNAVAILABLE, 'X.509-SVIDs are being issued; retry', `${l.entries.length} matching entr${l.entries.length === 1 ? 'y has' : 'ies have'} no valid X.509-SVID yet`) };
    } else {
      const bundles = this.#source.bundles();
      const identities = l.kind === 'matched' ? l.identities : [];
      // Bundle streams follow the entries (federated bundles included), whether or not their X.509-SVIDs are there yet.
      const entries = l.kind === 'matched' ? l.entries : [];
      const message =
        kind === 'x509svid'
          ? x509SvidResponse(identities, bundles)
          : kind === 'x509bundles'
            ? x509BundlesResponse(entries, bundles)
            : kind === 'witbundles'
              ? witBundlesResponse(bundles)
              : jwtBundlesResponse(entries, bundles);
      answer = { bytes: this.#serialize[kind](message), spiffeIds: kind === 'x509svid' ? identities.map((i) => i.spiffeId.toString()) : [] };
    }
    // Bounded: the entries of one generation are as many as distinct selector sets calling.
    if (this.#answers.size > 10_000) this.#answers.clear();
    this.#answers.set(key, answer);
    return answer;
  }

  /**
   * Sends the stream the current answer if it differs from what it last got.
   * One pump per stream at a time; changes during a send are coalesced into
   * one more round, so a slow reader gets the latest state, not a backlog.
   */
  async #pump(st: OpenStream): Promise<void> {
    if (st.running) {
      st.dirty = true;
      return;
    }
    st.running = true;
    try {
      do {
        st.dirty = false;
        if (st.closed) return;
        const next = st.kind === 'witsvid' ? await this.#nextWit(st) : this.#nextAnswer(st);
        if (next === 'ended') return;
        if (next === 'retry' || st.last?.equals(next.bytes)) continue;
        try {
          await this.#ensureSameProcess(st.caller);
        } catch (e) {
          this.#endStream(st.call, this.#refused(st.rpc, st.caller, st.call, e));
          return;
        }
        if (st.closed) return;
        const more = st.call.write(next.bytes);
        st.last = next.bytes;
        if (st.kind === 'x509svid' || st.kind === 'witsvid') this.#auditEvent(st.rpc, st.caller, undefined, { outcome: 'issued', spiffeIds: next.spiffeIds });
        if (!more) await drained(st.call);
      } while (st.dirty);
    } finally {
      st.running = false;
    }
  }

  /** The (shared) answer of an X.509-SVID or bundle stream; a refusal ends the stream. */
  #nextAnswer(st: OpenStream): { readonly bytes: Buffer; readonly spiffeIds: readonly string[] } | 'ended' {
    const answer = this.#answer(st.kind, st.caller);
    if (!('refusal' in answer)) return answer;
    this.#endStream(st.call, this.#refused(st.rpc, st.caller, st.call, answer.refusal));
    return 'ended';
  }

  /**
   * FetchWITSVID: the caller's WIT-SVIDs (each with the private key it binds),
   * sent at once, again on every entry change, and again before the tokens
   * sent reach half of their life (the source renews them then). A renewal
   * that fails keeps the stream (the tokens sent are still valid) and is
   * retried; a first answer that cannot be had ends it with Unavailable.
   */
  async #nextWit(st: OpenStream): Promise<{ readonly bytes: Buffer; readonly spiffeIds: readonly string[] } | 'ended' | 'retry'> {
    clearTimeout(st.witRefresh);
    let svids: WitSvidMessage[];
    let renewAt: number;
    try {
      ({ svids, renewAt } = await this.#witSvids(st));
    } catch (e) {
      const final = e instanceof RpcRefusal && (e.code === grpc.status.PERMISSION_DENIED || e.code === grpc.status.INVALID_ARGUMENT);
      if (st.last && !final) {
        st.witRefresh = setTimeout(() => void this.#pump(st), WIT_RETRY_MS);
        st.witRefresh.unref();
        return 'retry';
      }
      this.#endStream(st.call, this.#refused(st.rpc, st.caller, st.call, e));
      return 'ended';
    }
    if (st.closed) return 'ended';
    // Half of what is left of the shortest-lived token: the source renews at half of its life, so a
    // look that finds the same tokens comes back sooner each time, never after they expire.
    st.witRefresh = setTimeout(() => void this.#pump(st), Math.max(WIT_MIN_LOOK_MS, renewAt - Date.now()));
    st.witRefresh.unref();
    return { bytes: this.#serialize.witsvid({ svids }), spiffeIds: svids.map((s) => s.spiffe_id) };
  }

  /** The WIT-SVIDs of the stream's caller (optionally only `spiffe_id`), and when to look again. */
  async #witSvids(st: OpenStream): Promise<{ svids: WitSvidMessage[]; renewAt: number }> {
    let renewAt = Infinity;
    const svids = await this.#mintEach(st.caller, st.witSpiffeId, 'WIT-SVID', async (i): Promise<WitSvidMessage> => {
      const wit = await this.#source.fetchWitSvid!(i.entryId);
      const now = Date.now();
      renewAt = Math.min(renewAt, now + (wit.expiresAt.getTime() - now) / 2);
      return { spiffe_id: i.spiffeId.toString(), wit_svid: wit.token, wit_svid_key: wit.privateKeyJwk, hint: i.hint };
    });
    return { svids, renewAt };
  }

  #onSourceChange(): void {
    this.#answers.clear();
    for (const st of this.#streams) void this.#pump(st);
  }

  stop(graceMs = 2000): Promise<void> {
    this.#stopping ??= this.#stop(graceMs);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<void> {
    this.#unsubscribe?.();
    const closed = this.#netServer
      ? new Promise<void>((resolve) => this.#netServer!.close(() => resolve()))
      : Promise.resolve();
    for (const st of [...this.#streams]) {
      st.closed = true;
      this.#endStream(st.call, { code: grpc.status.UNAVAILABLE, details: 'the Workload API is shutting down' });
      if (this.#streams.delete(st)) this.#streamCounts.remove(st.caller.conn.peer.uid);
    }
    this.#injector.drain(graceMs);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#grpc.forceShutdown();
        resolve();
      }, graceMs);
      timer.unref();
      this.#grpc.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    this.#injector.destroy();
    for (const s of this.#sockets) s.destroy();
    // libuv unlinks the socket file when the listening pipe closes; unlinking
    // again here could remove the socket of an agent that started since.
    await closed;
  }
}

interface JwtSvidRequest {
  audience?: string[];
  spiffe_id?: string;
}

/** What a caller without entries is told: PermissionDenied when none match, Unavailable while the agent cannot tell. */
function refusalOf(l: Exclude<WorkloadLookup, { kind: 'matched' }>): RpcRefusal {
  if (l.kind === 'denied') return new RpcRefusal(grpc.status.PERMISSION_DENIED, NO_IDENTITY, l.detail);
  return new RpcRefusal(grpc.status.UNAVAILABLE, 'the agent is not ready to answer; retry', l.detail);
}

/** The call's deadline in ms since the epoch, undefined when it has none. */
function deadlineOf(call: { getDeadline(): grpc.Deadline }): number | undefined {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? ms : undefined;
}

/** The request's audience, judged before anything else: a bad one is InvalidArgument, never retried as an outage. */
function checkAudience(req: JwtSvidRequest): void {
  const audience = req.audience ?? [];
  if (audience.length === 0 || audience.some((a) => typeof a !== 'string' || a === '')) {
    throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, 'audience must be specified');
  }
  if (audience.length > MAX_JWT_AUDIENCES) throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, `at most ${MAX_JWT_AUDIENCES} audiences, got ${audience.length}`);
  if (audience.some((a) => a.length > MAX_JWT_AUDIENCE_CHARS)) {
    throw new RpcRefusal(grpc.status.INVALID_ARGUMENT, `an audience is longer than ${MAX_JWT_AUDIENCE_CHARS} characters`);
  }
}
interface ValidateRequest {
  audience: string;
  svid: string;
}

/** Starts the Workload API on `socketPath`. Throws WorkloadApiStartError when the socket cannot be taken. */
export async function startWorkloadApiServer(o: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
  const api = new WorkloadApi(o.socketPath, o);
  await api.listen();
  return api;
}
