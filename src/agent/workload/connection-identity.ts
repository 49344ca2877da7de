/**
 * Keeps the kernel's answer to "who opened this connection" attached to the
 * connection, so that each gRPC call is judged by the credentials of the
 * exact socket that carried it.
 *
 * Mechanism: the server accepts Unix-socket connections itself (net.Server),
 * reads SO_PEERCRED on each accepted socket before a single byte is read from
 * it, records what the connecting process runs (attestor.imageOf), then gives the socket a synthetic, unique `remoteAddress`
 * ("keel-uds-conn:<n>", an own property shadowing net.Socket's getter, which
 * is undefined for Unix sockets) and hands it to grpc-js through a
 * ConnectionInjector. grpc-js's public `call.getPeer()` reads
 * `stream.session.socket.remoteAddress`; Node's http2 session proxies that
 * property read to the socket we injected. The label is a key into a map of
 * live connections, so a call maps to its connection without reading grpc-js
 * internals. The client cannot influence the label. If a future grpc-js
 * stopped reporting it, lookups would miss and every call would fail closed
 * (Unavailable), never fall back to another connection's identity.
 */
import type { Socket } from 'node:net';
import type { PeerCredentials } from '../../os/peercred.js';
import type { ProcessImage } from './attestor.js';
import type { WorkloadAttestationError } from './errors.js';

export interface ConnectionIdentity {
  readonly label: string;
  readonly peer: PeerCredentials;
  /** Clock ticks after boot at (just after) accept: the caller's process must be older. */
  readonly acceptedBy: Promise<bigint | undefined>;
  /**
   * The connecting process as it was at accept (start time, executable), or
   * why it could not be examined. Every call is judged against it, so a
   * process that exec's after connecting is not taken for its new program.
   */
  readonly image: ProcessImage | WorkloadAttestationError;
  /** Set on a connection accepted over a limit: every call on it is refused with this reason. */
  readonly overLimit: string | undefined;
  /** Calls that arrived on the connection (a connection that never calls is closed early). */
  calls: number;
}

export interface AttachOptions {
  readonly acceptedBy: Promise<bigint | undefined>;
  readonly image: ProcessImage | WorkloadAttestationError;
  readonly overLimit?: string;
}

const LABEL_PREFIX = 'keel-uds-conn:';

export class ConnectionIdentities {
  readonly #live = new Map<string, ConnectionIdentity>();
  #next = 0;

  /**
   * Labels a freshly accepted socket whose peer credentials (`peer`, read
   * with peerCredentialsOf before a byte was read) and process image the
   * caller recorded. The entry goes when the socket closes.
   */
  attach(socket: Socket, peer: PeerCredentials, o: AttachOptions): ConnectionIdentity {
    const label = `${LABEL_PREFIX}${++this.#next}`;
    Object.defineProperty(socket, 'remoteAddress', { value: label, writable: false, enumerable: true, configurable: false });
    const id: ConnectionIdentity = { label, peer, acceptedBy: o.acceptedBy, image: o.image, overLimit: o.overLimit, calls: 0 };
    this.#live.set(label, id);
    socket.once('close', () => this.#live.delete(label));
    return id;
  }

  /** The connection a call arrived on, from grpc-js's `call.getPeer()`. */
  forPeer(peerString: string): ConnectionIdentity | undefined {
    return peerString.startsWith(LABEL_PREFIX) ? this.#live.get(peerString) : undefined;
  }

  get size(): number {
    return this.#live.size;
  }
}
