/**
 * grpc-js channel credentials for the Node API: TLS 1.3 to the server (its
 * SVID checked by SPIFFE ID against the trust given), then the channel
 * binding (src/proto/channel-binding.ts) before grpc-js gets the socket:
 * anonymous, or the agent SVID with a signature over this connection's TLS
 * exporter by the agent key. A refused binding fails the connection; the
 * reason is kept so that calls report it instead of "unavailable".
 *
 * The server's certificate is checked here, not by OpenSSL's chain check
 * (which compares validity with this node's clock, exactly): the handshake
 * itself still proves that the server holds the key of the certificate it
 * sent (TLS 1.3 CertificateVerify), then the chain is verified as an
 * X.509-SVID (src/spiffe verifyX509Svid: path to an authority of the trusted
 * bundle, signatures, CA constraints, key usage) with the configured clock
 * tolerance, and its SPIFFE ID must be the server's. Nothing is written to
 * the connection before that check passes.
 */
import { X509Certificate } from 'node:crypto';
import { connect as tlsConnect, type DetailedPeerCertificate, type TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { bindingMessage, encodeBindingRequest, readBindingAnswer } from '../../proto/channel-binding.js';
import { bundleFromX509Der, endorsedAuthorities, verifyX509Svid, X509SvidError } from '../../spiffe/index.js';
import { TrustDomain } from '../../spiffe/id.js';
import type { AgentCredential } from './credential.js';
import { NodeApiError } from './node-api-client.js';

export interface BoundCredentialsOptions {
  /** PEM certificates the server's SVID must chain to. */
  readonly trustPem: () => string;
  /** `spiffe://<td>/keel/server`. */
  readonly serverId: string;
  /** Absent: an anonymous connection (Attest only). */
  readonly credential?: () => AgentCredential;
  readonly timeoutMs?: number;
  /** Clock skew tolerated when checking the server's certificate chain (ms, default 0). */
  readonly clockToleranceMs?: number;
  /** This node's clock (tests); Date.now by default. */
  readonly now?: () => number;
  /** Called when the server's CA was accepted through a rollover certificate (it is new to this agent). */
  readonly onServerCaEndorsed?: (e: ServerCaEndorsement) => void;
}

export type ServerCertificateFailure =
  /** Not valid at this node's clock, even with the tolerance: a clock problem. */
  | 'clock'
  /** No path to an authority this agent trusts: the server's CA is unknown here. */
  | 'untrusted'
  /** Not the server's SPIFFE ID, or not a well-formed X.509-SVID. */
  | 'identity';

/** The server's TLS certificate was refused. */
export class ServerCertificateError extends Error {
  override readonly name = 'ServerCertificateError';
  constructor(
    readonly reason: ServerCertificateFailure,
    /** verifyX509Svid's reason, when it refused the chain. */
    readonly svidReason: string | undefined,
    detail: string,
  ) {
    super(`the server's certificate is refused (${reason}): ${detail}`);
  }
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

const CLOCK_REASONS: ReadonlySet<string> = new Set(['not-yet-valid', 'expired']);
const UNTRUSTED_REASONS: ReadonlySet<string> = new Set(['no-issuer', 'bad-signature', 'no-bundle-for-trust-domain']);
/** Failures a rollover certificate may answer: no path, or one through it that X.509 path rules refuse (pathLen 0 of the old CA). */
const ROLLOVER_REASONS: ReadonlySet<string> = new Set([...UNTRUSTED_REASONS, 'path-length-exceeded']);

/** PEM text → the certificates in it (anything else between them is ignored). */
export function pemCertificates(pem: string): X509Certificate[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]));
}

/** The chain the server sent, leaf first (as OpenSSL links it). */
function peerChain(t: TLSSocket): Buffer[] {
  const out: Buffer[] = [];
  let c: DetailedPeerCertificate | undefined = t.getPeerCertificate(true);
  while (c?.raw && out.length < 10 && !out.some((r) => r.equals(c!.raw))) {
    out.push(c.raw);
    c = c.issuerCertificate;
  }
  return out;
}

/** The server's CA was new to this agent and accepted because a CA it trusts signed it (key rollover). */
export interface ServerCaEndorsement {
  /** The server's new CA as the rollover certificate in the chain names it: subject, the rollover certificate's SHA-256 fingerprint, its end. */
  readonly authority: { readonly subject: string; readonly fingerprint256: string; readonly notAfter: string };
  /** The trusted authority that signed it. */
  readonly endorsedBy: { readonly subject: string; readonly fingerprint256: string };
}

/**
 * Checks the server's chain as an X.509-SVID for `serverId` against the
 * trusted PEM authorities, with a clock tolerance. A chain with no path to
 * them is still accepted when it carries a CA certificate of the trust
 * domain that one of them signed (the server's rollover certificate after a
 * CA rotation this agent did not see; see endorsedAuthorities): then the
 * endorsement is returned, for the caller to log. Throws ServerCertificateError.
 */
export function verifyServerChain(
  chainDer: readonly Buffer[],
  trustPem: string,
  serverId: string,
  o: { clockToleranceMs?: number; now?: Date } = {},
): ServerCaEndorsement | undefined {
  const td = /^spiffe:\/\/([^/]+)\//.exec(serverId)?.[1];
  if (!td) throw new ServerCertificateError('identity', undefined, `${serverId} is not a SPIFFE ID`);
  let chain: X509Certificate[];
  let roots: X509Certificate[];
  try {
    chain = chainDer.map((d) => new X509Certificate(d));
    roots = pemCertificates(trustPem);
  } catch (e) {
    throw new ServerCertificateError('identity', undefined, `unreadable certificate: ${(e as Error).message}`);
  }
  if (chain.length === 0) throw new ServerCertificateError('identity', undefined, 'the server sent no certificate');
  const opts = { ...(o.now ? { now: o.now } : {}), clockToleranceMs: o.clockToleranceMs ?? 0 };
  let id: string;
  let endorsement: ServerCaEndorsement | undefined;
  try {
    const bundle = bundleFromX509Der(td, Buffer.concat(roots.map((r) => r.raw)));
    try {
      id = verifyX509Svid(chain, bundle, opts).id.toString();
    } catch (e) {
      if (!(e instanceof X509SvidError) || !ROLLOVER_REASONS.has(e.rule)) throw e;
      const endorsed = endorsedAuthorities(chain.slice(1), bundle, TrustDomain.parse(td), opts);
      const found = endorsed.find((a) => {
        try {
          id = verifyX509Svid([chain[0]!], bundleFromX509Der(td, a.authority.raw), opts).id.toString();
          return true;
        } catch {
          return false;
        }
      });
      if (!found) throw e;
      endorsement = {
        authority: { subject: found.authority.subject, fingerprint256: found.authority.fingerprint256, notAfter: found.authority.validTo },
        endorsedBy: { subject: found.endorsedBy.subject, fingerprint256: found.endorsedBy.fingerprint256 },
      };
    }
  } catch (e) {
    if (e instanceof X509SvidError) {
      const reason: ServerCertificateFailure = CLOCK_REASONS.has(e.rule) ? 'clock' : UNTRUSTED_REASONS.has(e.rule) ? 'untrusted' : 'identity';
      throw new ServerCertificateError(reason, e.rule, e.message);
    }
    throw new ServerCertificateError('untrusted', undefined, (e as Error).message);
  }
  if (id! !== serverId) throw new ServerCertificateError('identity', undefined, `the server presented ${id!}, not ${serverId}`);
  return endorsement;
}

/** The connections one grpc-js connector is making, so that destroy() can end them. */
interface ConnectAttempts {
  destroyed: boolean;
  readonly sockets: Set<Socket>;
}

export class BoundChannelCredentials extends grpc.ChannelCredentials {
  readonly #o: BoundCredentialsOptions;
  /** The last refusal of a binding, cleared by the next bound connection. */
  lastRefusal: BindingRefusedError | undefined;
  /**
   * The last failure on this side of a connection (the TPM could not sign the
   * binding), cleared by the next bound connection: grpc-js reports it only
   * as UNAVAILABLE, which would read as "server unreachable".
   */
  lastLocalFailure: Error | undefined;
  /** The last refusal of the server's certificate, cleared by the next bound connection. */
  lastServerCertificateFailure: ServerCertificateError | undefined;

  constructor(o: BoundCredentialsOptions) {
    super();
    this.#o = o;
  }

  /**
   * A failed call as what it was when the connection itself failed: the
   * server's refusal of the binding (its reason), the server's certificate
   * refused here (`server-certificate-<reason>`), or our own side (`tpm`).
   * Anything but a transport failure is the server's answer, returned as is.
   */
  failureOf(e: unknown): NodeApiError {
    const err = NodeApiError.from(e);
    if (err.reason !== 'transport') return err;
    const refusal = this.lastRefusal;
    if (refusal) return new NodeApiError(refusal.reason, grpc.status.UNAUTHENTICATED, refusal.detail);
    const cert = this.lastServerCertificateFailure;
    if (cert) return new NodeApiError(`server-certificate-${cert.reason}`, grpc.status.UNAVAILABLE, cert.message);
    const local = this.lastLocalFailure;
    if (!local) return err;
    return new NodeApiError('tpm', grpc.status.UNAVAILABLE, `the TPM could not sign the channel binding (${local.name}): ${local.message}`);
  }

  override _isSecure(): boolean {
    return true;
  }

  override _equals(other: grpc.ChannelCredentials): boolean {
    return other === this;
  }

  override _createSecureConnector(): ReturnType<grpc.ChannelCredentials['_createSecureConnector']> {
    // grpc-js destroys the connector when the channel closes: a connection still
    // being made must end there, not bind (and be audited) after its owner is gone.
    const attempt: ConnectAttempts = { destroyed: false, sockets: new Set() };
    return {
      connect: (socket: Socket) => this.#connect(socket, attempt),
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => grpc.CallCredentials.createEmpty(),
      destroy: () => {
        attempt.destroyed = true;
        for (const s of attempt.sockets) s.destroy();
        attempt.sockets.clear();
      },
    };
  }

  async #connect(socket: Socket, attempt: ConnectAttempts): Promise<{ socket: Socket; secure: boolean }> {
    if (attempt.destroyed) {
      socket.destroy();
      throw new Error('the channel was closed');
    }
    attempt.sockets.add(socket);
    try {
      return await this.#connectTls(socket);
    } finally {
      attempt.sockets.delete(socket);
    }
  }

  async #connectTls(socket: Socket): Promise<{ socket: Socket; secure: boolean }> {
    const timeoutMs = this.#o.timeoutMs ?? 15_000;
    const tls = await new Promise<TLSSocket>((resolve, reject) => {
      const t: TLSSocket = tlsConnect(
        {
          socket,
          // The chain is verified below, with the clock tolerance (see the header).
          rejectUnauthorized: false,
          // SNI must be a host name (RFC 6066); the server is checked by its SPIFFE ID.
          servername: 'keel-server',
          ALPNProtocols: ['h2'],
          minVersion: 'TLSv1.3',
        },
        () => {
          try {
            const now = this.#o.now ? new Date(this.#o.now()) : undefined;
            const endorsed = verifyServerChain(peerChain(t), this.#o.trustPem(), this.#o.serverId, { clockToleranceMs: this.#o.clockToleranceMs ?? 0, ...(now ? { now } : {}) });
            if (endorsed) this.#o.onServerCaEndorsed?.(endorsed);
          } catch (e) {
            if (e instanceof ServerCertificateError) this.lastServerCertificateFailure = e;
            t.destroy();
            reject(e);
            return;
          }
          this.lastServerCertificateFailure = undefined;
          resolve(t);
        },
      );
      t.once('error', reject);
      t.setTimeout(timeoutMs, () => t.destroy(new Error(`TLS handshake with the server took over ${timeoutMs} ms`)));
    });
    tls.setTimeout(0);
    try {
      const cred = this.#o.credential?.();
      let signature: Buffer | undefined;
      if (cred) {
        try {
          signature = await cred.sign(bindingMessage(tls));
        } catch (e) {
          this.lastLocalFailure = e instanceof Error ? e : new Error(String(e));
          throw e;
        }
      }
      const frame = cred && signature
        ? encodeBindingRequest({ kind: 'agent', chain: cred.chain, signature })
        : encodeBindingRequest({ kind: 'anonymous' });
      const answerP = readBindingAnswer(tls, timeoutMs);
      // When the write fails (the server closed the connection) the read fails too, after the
      // write's error has been thrown: without a handler it would be an unhandled rejection,
      // which ends a Node process. The read is still awaited below when the write succeeds.
      answerP.catch(() => undefined);
      // The write must be complete before HTTP/2 takes the socket (see bound-listener.ts).
      await new Promise<void>((resolve, reject) => tls.write(frame, (err) => (err ? reject(err) : resolve())));
      const answer = await answerP;
      if (!answer.bound) {
        this.lastRefusal = new BindingRefusedError(answer.reason, answer.detail);
        throw this.lastRefusal;
      }
      this.lastRefusal = undefined;
      this.lastLocalFailure = undefined;
      return { socket: tls, secure: true };
    } catch (e) {
      tls.destroy();
      throw e;
    }
  }
}
