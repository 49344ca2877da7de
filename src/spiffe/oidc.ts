/**
 * The names OIDC relying parties compare: the JWT issuer (the `iss` of
 * JWT-SVIDs and the `issuer` of the discovery document) and the host names
 * discovery may be served for. Pure, no I/O.
 */
import { dnsNameProblem } from './dns-name.js';

/**
 * A JWT issuer as OIDC relying parties compare it, byte for byte with the
 * discovery document's `issuer` (OIDC Discovery §3, §4.3): an https URL
 * without userinfo, query or fragment, written without a trailing slash.
 * Undefined when `v` is not one.
 */
export function normalizeJwtIssuer(v: unknown): string | undefined {
  if (typeof v !== 'string' || v.length === 0 || v.length > 2048 || /[\s?#"'<>\\]/.test(v)) return undefined;
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'https:' || url.username || url.password || url.hostname.length === 0) return undefined;
  const issuer = v.replace(/\/+$/, '');
  // What is left must still be the URL it was (no scheme-relative or case tricks the URL parser rewrites).
  return issuer.length > 'https://'.length && url.href.replace(/\/+$/, '') === issuer ? issuer : undefined;
}

/**
 * An allow-list entry for OIDC discovery: a lowercase DNS name, optionally
 * with a port (not 443, which clients leave out of Host). Undefined when `v`
 * is not one.
 */
export function normalizeOidcDomain(v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined;
  const m = /^([^:]{1,253})(?::([1-9][0-9]{0,4}))?$/.exec(v);
  if (!m) return undefined;
  const [, name, port] = m as unknown as [string, string, string | undefined];
  // The SVID DNS-name rule (lowercase LDH labels), without its wildcard.
  if (name.startsWith('*') || dnsNameProblem(name) !== undefined) return undefined;
  if (port !== undefined && (Number(port) > 65535 || port === '443')) return undefined;
  return v;
}
