/**
 * Who is calling the admin API. Two ways in and no other:
 * - the local admin socket, where the file's mode already limits callers to
 *   the server's user and the kernel names the caller (SO_PEERCRED);
 * - TCP with mutual TLS, where the client certificate must be an X.509-SVID
 *   of this trust domain (checked against the CA's current bundle, so rotation
 *   needs no TLS reload) whose SPIFFE ID is an admin.
 */
import { X509Certificate } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket, type DetailedPeerCertificate } from 'node:tls';
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js';
import { X509SvidError } from '../../spiffe/errors.js';
import { verifyX509Svid } from '../../spiffe/x509-svid.js';
import type { Datastore } from '../store/index.js';
import type { Logger } from '../../log/index.js';
import type { BundleProvider } from './bundle-provider.js';
import { ProblemError } from './problem.js';

/** Longest client chain we look at; SVID chains are 1–3 certificates. */
const MAX_CLIENT_CHAIN = 8;

/** The certificates the client sent, leaf first, without self-signed roots (anchors come from the bundle only). */
export function clientChain(peer: DetailedPeerCertificate): X509Certificate[] {
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  let c: DetailedPeerCertificate | undefined = peer;
  while (c?.raw && out.length < MAX_CLIENT_CHAIN && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    const cert = new X509Certificate(c.raw);
    if (out.length === 0 || cert.subject !== cert.issuer) out.push(cert);
    c = c.issuerCertificate === c ? undefined : c.issuerCertificate;
  }
  return out;
}

export interface AdminAuthOptions {
  readonly trustDomain: TrustDomain;
  readonly store: Datastore;
  readonly bundles: BundleProvider;
  /** SPIFFE IDs that are admins whatever the entries say (bootstrap). */
  readonly adminIds?: readonly (SpiffeId | string)[];
  readonly now?: () => Date;
}

export type Authenticate = (socket: Socket) => Promise<string>;

/** Authenticates a TLS connection's client SVID; returns the actor (the SPIFFE ID) or throws a 401/403 problem. */
export function svidAuthenticator(o: AdminAuthOptions): Authenticate {
  const configured = new Set((o.adminIds ?? []).map((id) => (typeof id === 'string' ? SpiffeId.parse(id) : id).toString()));
  const now = o.now ?? (() => new Date());
  const isAdmin = async (id: SpiffeId): Promise<boolean> => {
    if (configured.has(id.toString())) return true;
    const at = now();
    const { items } = await o.store.listEntries({ spiffeId: id }, { limit: 1000 });
    return items.some((e) => e.admin && (e.expiresAt === undefined || e.expiresAt > at));
  };
  return async (socket) => {
    if (!(socket instanceof TLSSocket)) {
      throw new ProblemError(401, 'unauthenticated', `the admin API over TCP needs mutual TLS with an admin X.509-SVID of ${o.trustDomain.name}`);
    }
    const peer = socket.getPeerCertificate(true);
    if (!peer?.raw) throw new ProblemError(401, 'unauthenticated', `no client certificate: present an admin X.509-SVID of ${o.trustDomain.name}`);
    let id: SpiffeId;
    try {
      id = verifyX509Svid(clientChain(peer), o.bundles.bundle(), { now: now() }).id;
    } catch (e) {
      if (e instanceof X509SvidError) {
        throw new ProblemError(401, 'unauthenticated', `the client certificate is not an X.509-SVID of ${o.trustDomain.name}: ${e.message}`);
      }
      throw e;
    }
    if (!(await isAdmin(id))) throw new ProblemError(403, 'forbidden', `${id.toString()} is not an admin of ${o.trustDomain.name}`);
    return id.toString();
  };
}

type PeerCredentialsOf = (socket: Socket) => { uid: number };
let peerCreds: Promise<PeerCredentialsOf | undefined> | undefined;

/** src/os/peercred (native addon) when it loads; undefined otherwise, and the actor is then just `local`. */
function loadPeerCredentials(logger: Logger): Promise<PeerCredentialsOf | undefined> {
  peerCreds ??= import('../../os/peercred.js').then(
    (m) => m.peerCredentialsOf,
    (e: unknown) => {
      logger.warn('peer credentials unavailable; admin socket callers are recorded as "local"', { err: e });
      return undefined;
    },
  );
  return peerCreds;
}

/**
 * Names the caller on the admin socket: `local:uid=<n>` from SO_PEERCRED, or
 * `local` when the native addon is not built. The socket file's mode is what
 * keeps other users out; this is for the audit trail.
 */
export function localAuthenticator(logger: Logger): Authenticate {
  const bySocket = new WeakMap<Socket, string>();
  let warned = false;
  return async (socket) => {
    const known = bySocket.get(socket);
    if (known) return known;
    const read = await loadPeerCredentials(logger);
    let actor = 'local';
    if (read) {
      try {
        actor = `local:uid=${read(socket).uid}`;
      } catch (e) {
        if (!warned) logger.warn('reading peer credentials of an admin socket connection failed', { err: e });
        warned = true;
      }
    }
    bySocket.set(socket, actor);
    return actor;
  };
}
