/**
 * The Node API's TCP listener: TLS 1.3 terminated here (not by grpc-js), the
 * channel-binding frame read and judged before a single HTTP/2 byte, then the
 * socket handed to grpc-js through a connection injector.
 *
 * Each accepted connection gets a synthetic, unique `remoteAddress`
 * ("keel-node-conn:<n>", an own property shadowing the socket's getter, with
 * remotePort 0) so that grpc-js's public `call.getPeer()` names the
 * connection, and every call is judged by the binding of the connection that
 * carried it. The client cannot influence the label. A lookup that misses
 * fails closed. The real peer address is kept beside the label for limits
 * and audit lines.
 */
import { createServer, type Server as TlsServer, type SecureContextOptions, type TLSSocket } from 'node:tls';
import type { ConnectionInjector } from '@grpc/grpc-js';
import { ChannelBindingError, encodeBindingAnswer, readBindingRequest, type BindingRequest } from '../../proto/channel-binding.js';
import type { SpiffeId } from '../../spiffe/id.js';

const LABEL_PREFIX = 'keel-node-conn:';

/** The agent a connection is bound to: its SPIFFE ID and the serial of the SVID it proved. */
export interface BoundAgent {
  readonly agentId: SpiffeId;
  readonly serial: string;
}

export interface NodeConnection {
  readonly label: string;
  /** `ip:port` of the TCP peer. */
  readonly peer: string;
  /** The peer's IP address, for per-peer limits. */
  readonly peerIp: string;
  readonly binding: BoundAgent | undefined;
  /** Closes the connection (its calls end with UNAVAILABLE). */
  destroy(): void;
}

/** Why a binding was refused: a reason code and words, sent back to the client before the connection closes. */
export class BindingRefused extends Error {
  constructor(
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`${reason}: ${detail}`);
  }
}

export interface BoundListenerOptions {
  /** `host:port`, port 0 for a free one; `[v6]:port` for IPv6. */
  readonly address: string;
  readonly context: SecureContextOptions;
  /** grpc-js's injector (Server.createConnectionInjector): bound sockets go to it. */
  readonly injector: Pick<ConnectionInjector, 'injectConnection'>;
  /** Judges an agent binding (chain, signature over the socket's exporter); throws BindingRefused. */
  readonly verify: (req: Extract<BindingRequest, { kind: 'agent' }>, socket: TLSSocket) => Promise<BoundAgent>;
  readonly onRefused?: (peer: string, e: BindingRefused) => void;
  readonly onError?: (err: unknown) => void;
  /** How long a new connection may take to send its binding (default 10 s). */
  readonly bindingTimeoutMs?: number;
  /** Connections that finished TLS but not yet the binding, at most (default 1024): beyond, new ones are dropped. */
  readonly maxPending?: number;
  /** Connections in all, in any state (default 65,536). */
  readonly maxConnections?: number;
}

function splitAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(address);
  if (!m) throw new RangeError(`the Node API address ${JSON.stringify(address)} is not host:port`);
  return { host: m[1] ?? m[2] ?? '', port: Number(m[3]) };
}

export class BoundListener {
  readonly #o: BoundListenerOptions;
  readonly #server: TlsServer;
  readonly #live = new Map<string, NodeConnection>();
  #next = 0;
  #pending = 0;
  port = 0;

  private constructor(o: BoundListenerOptions) {
    this.#o = o;
    this.#server = createServer({ ...o.context, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3', requestCert: false, handshakeTimeout: o.bindingTimeoutMs ?? 10_000 });
    // Every connection counts against maxConnections, handshakes that never finish included (they end at handshakeTimeout).
    this.#server.maxConnections = o.maxConnections ?? 65_536;
    this.#server.on('secureConnection', (socket: TLSSocket) => void this.#accept(socket));
    this.#server.on('tlsClientError', () => undefined);
    this.#server.on('error', (e) => o.onError?.(e));
  }

  static async listen(o: BoundListenerOptions): Promise<BoundListener> {
    const l = new BoundListener(o);
    const { host, port } = splitAddress(o.address);
    await new Promise<void>((resolve, reject) => {
      l.#server.once('error', reject);
      l.#server.listen({ host: host || undefined, port }, () => {
        l.#server.off('error', reject);
        resolve();
      });
    });
    const a = l.#server.address();
    l.port = typeof a === 'object' && a ? a.port : port;
    return l;
  }

  /** New connections use this certificate; open ones keep theirs. */
  setContext(context: SecureContextOptions): void {
    this.#server.setSecureContext(context);
  }

  /** The connection a call arrived on, from grpc-js's `call.getPeer()`. */
  forPeer(peer: string): NodeConnection | undefined {
    return peer.startsWith(LABEL_PREFIX) ? this.#live.get(peer) : undefined;
  }

  connections(): IterableIterator<NodeConnection> {
    return this.#live.values();
  }

  async #accept(socket: TLSSocket): Promise<void> {
    const peerIp = socket.remoteAddress ?? 'unknown';
    const peer = `${peerIp}:${socket.remotePort ?? 0}`;
    if (this.#pending >= (this.#o.maxPending ?? 1024)) {
      socket.destroy();
      return;
    }
    this.#pending++;
    try {
      await this.#bind(socket, peer, peerIp);
    } finally {
      this.#pending--;
    }
  }

  async #bind(socket: TLSSocket, peer: string, peerIp: string): Promise<void> {
    let binding: BoundAgent | undefined;
    try {
      const req = await readBindingRequest(socket, this.#o.bindingTimeoutMs ?? 10_000);
      if (req.kind === 'agent') binding = await this.#o.verify(req, socket);
    } catch (e) {
      const refusal = e instanceof BindingRefused
        ? e
        : e instanceof ChannelBindingError
          ? new BindingRefused('malformed', e.message)
          : new BindingRefused('internal', 'the server could not judge the channel binding');
      if (!(e instanceof BindingRefused) && !(e instanceof ChannelBindingError)) this.#o.onError?.(e);
      this.#o.onRefused?.(peer, refusal);
      if (!socket.destroyed) socket.end(encodeBindingAnswer({ bound: false, reason: refusal.reason, detail: refusal.detail }));
      // A peer that never reads its answer must not keep the socket.
      setTimeout(() => socket.destroy(), 2000).unref();
      return;
    }
    if (socket.destroyed) return;
    const label = `${LABEL_PREFIX}${++this.#next}`;
    Object.defineProperty(socket, 'remoteAddress', { value: label, writable: false, enumerable: true, configurable: false });
    Object.defineProperty(socket, 'remotePort', { value: 0, writable: false, enumerable: true, configurable: false });
    const conn: NodeConnection = { label, peer, peerIp, binding, destroy: () => socket.destroy() };
    this.#live.set(label, conn);
    socket.once('close', () => this.#live.delete(label));
    // HTTP/2 must take the socket only once our write has completed: a write
    // still queued in the TLS layer would complete into http2's stream and abort node.
    socket.write(encodeBindingAnswer({ bound: true }), (err) => {
      if (err || socket.destroyed) {
        socket.destroy();
        return;
      }
      this.#o.injector.injectConnection(socket);
    });
  }

  async close(): Promise<void> {
    for (const c of this.#live.values()) c.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
