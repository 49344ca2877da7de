/**
 * The Node API's own TLS identity: an X.509-SVID `spiffe://<td>/keel/server`
 * for a P-256 key generated in process memory (the TLS key is not the CA key,
 * which never leaves the HSM), issued by keel's CA and renewed at half life.
 * New connections pick the renewed certificate up; open ones keep theirs.
 */
import { generateKeyPairSync } from 'node:crypto';
import { buildCsr } from '../../spiffe/csr.js';
import { ServerCredentials, type ServerInterceptor } from '@grpc/grpc-js';
import type { SecureServerOptions } from 'node:http2';
import type { SecureContextOptions } from 'node:tls';
import { derToPem, type CertificateAuthority } from '../ca/index.js';
import { serverIdOf } from '../store/index.js';

/**
 * grpc-js server credentials that ask for a client certificate without
 * requiring one (Attest is open; the mTLS methods check the peer per call)
 * and whose certificate can be replaced while the server runs.
 */
class RenewableServerCredentials extends ServerCredentials {
  constructor(context: SecureContextOptions) {
    const server: SecureServerOptions = { requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' };
    super(server, context);
  }
  replace(context: SecureContextOptions): void {
    this.updateSecureContextOptions(context);
  }
  override _equals(other: ServerCredentials): boolean {
    return other === this;
  }
  override _getInterceptors(): ServerInterceptor[] {
    return [];
  }
}

export interface ServerIdentityOptions {
  readonly ca: Pick<CertificateAuthority, 'issueX509Svid' | 'bundle' | 'trustDomain'>;
  readonly ttlSeconds: number;
  /** DNS names for clients that check host names (keel's agent checks the SPIFFE ID instead). */
  readonly dnsNames?: readonly string[];
  readonly now?: () => number;
  readonly onError?: (err: unknown) => void;
}

export class ServerIdentity {
  readonly credentials: RenewableServerCredentials;
  #notAfter: Date;
  #renewAt: number;
  #timer: NodeJS.Timeout | undefined;
  readonly #o: ServerIdentityOptions;

  private constructor(o: ServerIdentityOptions, context: SecureContextOptions, notBefore: Date, notAfter: Date) {
    this.#o = o;
    this.credentials = new RenewableServerCredentials(context);
    this.#notAfter = notAfter;
    this.#renewAt = halfLife(notBefore, notAfter);
  }

  static async create(o: ServerIdentityOptions): Promise<ServerIdentity> {
    const { context, notBefore, notAfter } = await issue(o);
    const id = new ServerIdentity(o, context, notBefore, notAfter);
    id.#schedule();
    return id;
  }

  get notAfter(): Date {
    return this.#notAfter;
  }

  /** Issues a new SVID for a new key now (also what the timer does at half life). */
  async renew(): Promise<void> {
    const { context, notBefore, notAfter } = await issue(this.#o);
    this.credentials.replace(context);
    this.#notAfter = notAfter;
    this.#renewAt = halfLife(notBefore, notAfter);
  }

  #schedule(): void {
    const now = this.#o.now?.() ?? Date.now();
    // Capped so that a long TTL never overflows setTimeout; it just checks again.
    const delay = Math.min(Math.max(this.#renewAt - now, 1000), 3_600_000);
    this.#timer = setTimeout(() => {
      const due = (this.#o.now?.() ?? Date.now()) >= this.#renewAt;
      (due ? this.renew() : Promise.resolve())
        .catch((e) => this.#o.onError?.(e))
        .finally(() => {
          if (this.#timer) this.#schedule();
        });
    }, delay);
    this.#timer.unref();
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

function halfLife(notBefore: Date, notAfter: Date): number {
  return notBefore.getTime() + (notAfter.getTime() - notBefore.getTime()) / 2;
}

async function issue(o: ServerIdentityOptions): Promise<{ context: SecureContextOptions; notBefore: Date; notAfter: Date }> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const svid = await o.ca.issueX509Svid({
    csr: buildCsr(privateKey),
    spiffeId: serverIdOf(o.ca.trustDomain),
    ttlSeconds: o.ttlSeconds,
    ...(o.dnsNames ? { dnsNames: o.dnsNames } : {}),
  });
  const chainPem = [svid.certDer, ...svid.chainDer].map((d) => derToPem(d)).join('');
  const caPem = o.ca.bundle().x509Authorities.map((c) => c.toString()).join('');
  return {
    context: { cert: chainPem, key: privateKey.export({ type: 'pkcs8', format: 'pem' }), ca: caPem },
    notBefore: svid.notBefore,
    notAfter: svid.notAfter,
  };
}
