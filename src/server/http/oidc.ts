/**
 * OIDC discovery for JWT-SVIDs, as SPIRE's OIDC discovery provider serves it:
 * a discovery document naming the issuer and the JWKS, and the JWKS of the
 * JWT authorities in the form OIDC relying parties expect (`use: sig`, `alg`).
 * keel is not an OpenID Provider: there is no authorization endpoint.
 */
import { defaultAlgorithmFor } from '../ca/algorithms.js';
import type { KeyObject } from 'node:crypto';
import type { TrustBundle } from '../../spiffe/bundle.js';

export interface OidcJwk {
  kty: string;
  kid: string;
  use: 'sig';
  alg: string;
  [param: string]: unknown;
}

export function oidcJwks(bundle: TrustBundle): { keys: OidcJwk[] } {
  const keys: OidcJwk[] = [];
  for (const [kid, key] of bundle.jwtAuthorities) {
    // The algorithm the CA signs with for this key; a key it could not sign with is not published.
    let alg: string;
    try {
      alg = defaultAlgorithmFor(key);
    } catch {
      continue;
    }
    const { kty, d: _private, ...params } = key.export({ format: 'jwk' });
    keys.push({ kty: kty ?? '', kid, use: 'sig', alg, ...params });
  }
  return { keys };
}

/** Algorithms keel's CA can sign JWT-SVIDs with; listed when no key is published yet. */
const KEEL_JWT_ALGORITHMS = ['ES256', 'ES384', 'RS256'];

export function discoveryDocument(issuer: string, bundle: TrustBundle): Record<string, unknown> {
  const base = issuer.replace(/\/+$/, '');
  const algs = [...new Set(oidcJwks(bundle).keys.map((k) => k.alg))];
  return {
    issuer: base,
    jwks_uri: `${base}/keys`,
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: algs.length > 0 ? algs : KEEL_JWT_ALGORITHMS,
  };
}
