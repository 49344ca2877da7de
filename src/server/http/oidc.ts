/**
 * OIDC discovery for JWT-SVIDs, as SPIRE's OIDC discovery provider serves it:
 * a discovery document naming the issuer and the JWKS, and the JWKS of the
 * JWT authorities in the form OIDC relying parties expect (`use: sig`, `alg`).
 * keel is not an OpenID Provider: there is no authorization endpoint.
 */
import { defaultAlgorithmFor } from '../ca/algorithms.js';
import type { TrustBundle } from '../../spiffe/bundle.js';
import { normalizeJwtIssuer, normalizeOidcDomain } from '../../spiffe/oidc.js';

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

/**
 * Where the issuer of the discovery document comes from: configuration only,
 * never a request header.
 * - `issuer` (server.jwt.issuer, the `iss` of every JWT-SVID): discovery names it;
 * - `domains` (server.jwt.oidc_domains): only a request whose Host is on the
 *   list is answered; without an issuer it gets `https://<that list entry>`;
 * - neither: discovery is not served.
 */
export interface OidcIssuerConfig {
  readonly issuer?: string;
  readonly domains?: readonly string[];
}

export class OidcConfigError extends Error {
  override name = 'OidcConfigError';
}

/** Checks the configuration once; the resolver it returns maps a Host header to the issuer to publish, or undefined. */
export function oidcIssuerResolver(c: OidcIssuerConfig): ((host: string | undefined) => string | undefined) | undefined {
  let issuer: string | undefined;
  if (c.issuer !== undefined) {
    issuer = normalizeJwtIssuer(c.issuer);
    if (issuer === undefined) throw new OidcConfigError(`jwtIssuer ${JSON.stringify(c.issuer)} must be an https URL without userinfo, query or fragment`);
  }
  const domains = new Set<string>();
  for (const d of c.domains ?? []) {
    const n = normalizeOidcDomain(d);
    if (n === undefined) throw new OidcConfigError(`OIDC domain ${JSON.stringify(d)} must be a lowercase DNS name, optionally with a port other than 443`);
    domains.add(n);
  }
  if (domains.size === 0) return issuer === undefined ? undefined : () => issuer;
  return (host) => {
    const domain = allowedHost(host, domains);
    if (domain === undefined) return undefined;
    return issuer ?? `https://${domain}`;
  };
}

/**
 * The list entry that a Host header names exactly (case aside, `:443` aside),
 * or undefined. Only the list's own string is ever returned: nothing of the
 * header reaches the response.
 */
function allowedHost(host: string | undefined, domains: ReadonlySet<string>): string | undefined {
  if (typeof host !== 'string' || host.length === 0 || host.length > 260) return undefined;
  let h = host.toLowerCase();
  if (h.endsWith(':443')) h = h.slice(0, -4);
  return domains.has(h) ? h : undefined;
}
