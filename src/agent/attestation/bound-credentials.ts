/**
 * grpc-js channel credentials for the Node API: TLS 1.3 to the server (its
 * SVID checked by SPIFFE ID against the trust given), then the channel
 * binding (src/proto/channel-binding.ts) before grpc-js gets the socket:
 * anonymous, or the agent SVID with a signature over this connection's TLS
 * exporter by the agent key. A refused binding fails the connection; the
 * reason is kept so that calls report it instead of "unavailable".
 */
import { connect as tlsConnect, type PeerCertificate, type TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { bindingMessage, encodeBindingRequest, readBindingAnswer } from '../../proto/channel-binding.js';
import type { AgentCredential } from './credential.js';

export interface BoundCredentialsOptions {
  /** PEM certificates the server's SVID must chain to. */
  readonly trustPem: () => string;
  /** `spiffe://<td>/keel/server`. */
  readonly serverId: string;
  /** Absent: an anonymous connection (Attest only). */
  readonly credential?: () => AgentCredential;
  readonly timeoutMs?: number;
}

/** The server refused the channel binding (its reason: superseded, not-active, unauthenticated, …). */
export class BindingRefusedError extends Error {
  override readonly name = 'BindingRefusedError';
  constructor(
    readonly reason: string,
    readonly detail: string,
  ) {
    super(`the server refused the connection (${reason}): ${detail}`);
  }
}

function checkServerId(serverId: string, cert: PeerCertificate): Error | undefined {
  const uris = (cert.subjectaltname ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
  return uris.length === 1 && uris[0] === serverId ? undefined : new Error(`the server presented ${uris.join(', ') || 'no SPIFFE ID'}, not ${serverId}`);
}

export class BoundChannelCredentials extends grpc.ChannelCredentials {
  readonly #o: BoundCredentialsOptions;
  /** The last refusal of a binding, cleared by the next bound connection. */
  lastRefusal: BindingRefusedError | undefined;

  constructor(o: BoundCredentialsOptions) {
    super();
    this.#o = o;
  }

  override _isSecure(): boolean {
    return true;
  }

  override _equals(other: grpc.ChannelCredentials): boolean {
    return other === this;
  }

  override _createSecureConnector(): ReturnType<grpc.ChannelCredentials['_createSecureConnector']> {
    return {
      connect: (socket: Socket) => this.#connect(socket),
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => grpc.CallCredentials.createEmpty(),
      destroy: () => undefined,
    };
  }

  async #connect(socket: Socket): Promise<{ socket: Socket; secure: boolean }> {
    const timeoutMs = this.#o.timeoutMs ?? 15_000;
    const tls = await new Promise<TLSSocket>((resolve, reject) => {
      const t: TLSSocket = tlsConnect(
        {
          socket,
          ca: this.#o.trustPem(),
          // SNI must be a host name (RFC 6066); the server is checked by its SPIFFE ID.
          servername: 'keel-server',
          ALPNProtocols: ['h2'],
          minVersion: 'TLSv1.3',
          checkServerIdentity: (_h, cert) => checkServerId(this.#o.serverId, cert),
        },
        () => resolve(t),
      );
      t.once('error', reject);
      t.setTimeout(timeoutMs, () => t.destroy(new Error(`TLS handshake with the server took over ${timeoutMs} ms`)));
    });
    tls.setTimeout(0);
    try {
      const cred = this.#o.credential?.();
      const frame = cred
        ? encodeBindingRequest({ kind: 'agent', chain: cred.chain, signature: await cred.sign(bindingMessage(tls)) })
        : encodeBindingRequest({ kind: 'anonymous' });
      const answerP = readBindingAnswer(tls, timeoutMs);
      // The write must be complete before HTTP/2 takes the socket (see bound-listener.ts).
      await new Promise<void>((resolve, reject) => tls.write(frame, (err) => (err ? reject(err) : resolve())));
      const answer = await answerP;
      if (!answer.bound) {
        this.lastRefusal = new BindingRefusedError(answer.reason, answer.detail);
        throw this.lastRefusal;
      }
      this.lastRefusal = undefined;
      return { socket: tls, secure: true };
    } catch (e) {
      tls.destroy();
      throw e;
    }
  }
}
