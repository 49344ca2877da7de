/**
 * The Node API's own TLS identity: an X.509-SVID `spiffe://<td>/keel/server`
 * for a P-256 key generated in process memory (the TLS key is not the CA key,
 * which never leaves the HSM), issued by keel's CA and renewed at half life.
 * New connections pick the renewed certificate up; open ones keep theirs.
 * It is also renewed as soon as the CA activates another key, so the TLS
 * chain always ends in the active CA, followed by that CA's rollover
 * certificates: an agent that knows only the previous CA (it was away
 * during the rotation) can still authenticate the server and fetch the bundle.
 */
import { generateKeyPairSync } from 'node:crypto';
import { buildCsr } from '../../spiffe/csr.js';
import type { SecureContextOptions } from 'node:tls';
import { derToPem, type CertificateAuthority } from '../ca/index.js';
import { serverIdOf } from '../store/index.js';

export interface ServerIdentityOptions {
  readonly ca: Pick<CertificateAuthority, 'issueX509Svid' | 'bundle' | 'trustDomain'> &
    Partial<Pick<CertificateAuthority, 'rolloverCertificates' | 'activeCaCertificate' | 'onActivation'>>;
  readonly ttlSeconds: number;
  /** DNS names for clients that check host names (keel's agent checks the SPIFFE ID instead). */
  readonly dnsNames?: readonly string[];
  readonly now?: () => number;
  readonly onError?: (err: unknown) => void;
}

export class ServerIdentity {
  #context: SecureContextOptions;
  readonly #listeners = new Set<(context: SecureContextOptions) => void>();
  #notAfter: Date;
  #renewAt: number;
  #timer: NodeJS.Timeout | undefined;
  readonly #o: ServerIdentityOptions;
  /** The active CA certificate the current SVID was issued under. */
  #issuer: Buffer | undefined;
  #unsubscribe: (() => void) | undefined;

  private constructor(o: ServerIdentityOptions, context: SecureContextOptions, notBefore: Date, notAfter: Date) {
    this.#o = o;
    this.#context = context;
    this.#notAfter = notAfter;
    this.#renewAt = halfLife(notBefore, notAfter);
  }

  static async create(o: ServerIdentityOptions): Promise<ServerIdentity> {
    const { context, notBefore, notAfter } = await issue(o);
    const id = new ServerIdentity(o, context, notBefore, notAfter);
    id.#issuer = o.ca.activeCaCertificate?.();
    id.#schedule();
    id.#unsubscribe = o.ca.onActivation?.(() => {
      const active = o.ca.activeCaCertificate?.();
      if (!active || (id.#issuer && active.equals(id.#issuer))) return;
      id.renew().catch((e: unknown) => o.onError?.(e));
    });
    return id;
  }

  /** The TLS certificate chain and key now (the key is in process memory; it is not the CA's). */
  get context(): SecureContextOptions {
    return this.#context;
  }

  /** Called with the new context after each renewal. */
  onRenewed(listener: (context: SecureContextOptions) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get notAfter(): Date {
    return this.#notAfter;
  }

  /** Issues a new SVID for a new key now (also what the timer does at half life). */
  async renew(): Promise<void> {
    const issuer = this.#o.ca.activeCaCertificate?.();
    const { context, notBefore, notAfter } = await issue(this.#o);
    this.#issuer = issuer;
    this.#context = context;
    for (const l of this.#listeners) l(context);
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
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
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
  const chainPem = [svid.certDer, ...svid.chainDer, ...(o.ca.rolloverCertificates?.() ?? [])].map((d) => derToPem(d)).join('');
  const caPem = o.ca.bundle().x509Authorities.map((c) => c.toString()).join('');
  return {
    context: { cert: chainPem, key: privateKey.export({ type: 'pkcs8', format: 'pem' }), ca: caPem },
    notBefore: svid.notBefore,
    notAfter: svid.notAfter,
  };
}
