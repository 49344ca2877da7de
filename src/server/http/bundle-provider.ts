/**
 * What the HTTP API needs from the CA: the trust domain's current bundle.
 * `CertificateAuthority` (src/server/ca) satisfies it as is.
 */
import type { TrustBundle } from '../../spiffe/bundle.js';

export interface BundleProvider {
  /** X.509 and JWT authorities of this trust domain, prepared keys included. */
  bundle(): TrustBundle;
}

/** A CA key as the metrics report it (CertificateAuthority.status() items fit). */
export interface CaKeyStatus {
  readonly kind: 'x509' | 'jwt';
  readonly label: string;
  readonly state: string;
  readonly notAfter: Date;
}
