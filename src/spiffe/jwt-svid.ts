/**
 * JWT-SVIDs (standards/JWT-SVID.md). Minting assembles the compact JWS by
 * hand because the key lives behind a Signer (an HSM); validation checks the
 * JOSE header and claims as the standard restricts them and lets jose check
 * the signature with the key the bundle of the `sub`'s trust domain holds
 * under the token's `kid`.
 */
import type { KeyObject } from 'node:crypto';
import { compactVerify, errors as joseErrors } from 'jose';
import { JwtSvidError, type JwtSvidReason } from './errors.js';
import { SpiffeId } from './id.js';
import { decodeJwsJsonSegment, type JsonObject } from './json.js';
import type { Signer } from './signer.js';
import type { JwtBundleSource } from './bundle.js';

/** RFC 7518 §3.3–3.5, the only algorithms JWT-SVID allows (§2.1). */
export const JWT_SVID_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512'] as const;
export type JwtSvidAlgorithm = (typeof JWT_SVID_ALGORITHMS)[number];

/** The header parameters JWT-SVID permits (§2: any other MUST NOT be present). */
const ALLOWED_HEADER = new Set(['alg', 'kid', 'typ']);
const EC_CURVE: Partial<Record<JwtSvidAlgorithm, string>> = { ES256: 'prime256v1', ES384: 'secp384r1', ES512: 'secp521r1' };
const EC_SIG_BYTES: Partial<Record<JwtSvidAlgorithm, number>> = { ES256: 64, ES384: 96, ES512: 132 };
const RESERVED_CLAIMS = new Set(['sub', 'aud', 'exp', 'iat', 'iss']);
/** Far above any real JWT-SVID; stops decoding of megabyte garbage early. */
const MAX_TOKEN_CHARS = 64 * 1024;
const B64URL = /^[A-Za-z0-9_-]*$/;

function fail(reason: JwtSvidReason, detail: string): never {
  throw new JwtSvidError(reason, detail);
}

const b64url = (data: string | Uint8Array): string => Buffer.from(data).toString('base64url');

function isAlgorithm(alg: unknown): alg is JwtSvidAlgorithm {
  return typeof alg === 'string' && (JWT_SVID_ALGORITHMS as readonly string[]).includes(alg);
}

export interface MintJwtSvidInput {
  signer: Signer;
  sub: SpiffeId;
  /** One or more audiences; one is strongly recommended (§7.2). */
  aud: readonly string[];
  expiresAt: Date;
  issuedAt?: Date;
  /**
   * The `iss` claim: the issuer OIDC relying parties check against the
   * discovery document (server.jwt.issuer). Absent: no `iss`, as JWT-SVID allows.
   */
  issuer?: string;
  /** Added to the claims; may not replace sub, aud, exp, iat or iss. */
  extraClaims?: Readonly<Record<string, unknown>>;
}

function secondsOf(d: Date, what: string): number {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) fail('bad-mint-input', `${what} is not a valid Date`);
  return Math.floor(d.getTime() / 1000);
}

/** Mints a JWT-SVID: header {alg, kid, typ: JWT}, claims iss (when given)/sub/aud/exp/iat (+ extras), signed by `signer`. */
export async function mintJwtSvid(input: MintJwtSvidInput): Promise<string> {
  const { signer, sub, aud } = input;
  if (!(sub instanceof SpiffeId)) fail('bad-mint-input', 'sub must be a SpiffeId');
  if (!Array.isArray(aud) || aud.length === 0 || aud.some((a) => typeof a !== 'string' || a.length === 0)) {
    fail('bad-mint-input', 'aud must hold at least one non-empty string');
  }
  const alg = signer.algorithm;
  if (!isAlgorithm(alg)) fail('bad-mint-input', `signer algorithm ${String(alg)} is not allowed for JWT-SVIDs`);
  if (typeof signer.keyId !== 'string' || signer.keyId.length === 0) fail('bad-mint-input', 'signer has no key ID');
  const exp = secondsOf(input.expiresAt, 'expiresAt');
  const iat = secondsOf(input.issuedAt ?? new Date(), 'issuedAt');
  if (exp <= iat) fail('bad-mint-input', 'expiresAt must be after issuedAt');
  for (const k of Object.keys(input.extraClaims ?? {})) {
    if (RESERVED_CLAIMS.has(k)) fail('bad-mint-input', `extraClaims may not set "${k}"`);
  }
  const iss = input.issuer;
  if (iss !== undefined && (typeof iss !== 'string' || iss.length === 0 || iss.length > 2048)) {
    fail('bad-mint-input', 'issuer must be a non-empty string of at most 2048 characters');
  }

  const header = { alg, kid: signer.keyId, typ: 'JWT' };
  // go-jose writes a single audience as a string; consumers accept both forms.
  const claims = { ...(iss !== undefined ? { iss } : {}), sub: sub.toString(), aud: aud.length === 1 ? aud[0] : [...aud], exp, iat, ...input.extraClaims };
  let payloadJson: string;
  try {
    payloadJson = JSON.stringify(claims);
  } catch (err) {
    return fail('bad-mint-input', `claims are not JSON: ${(err as Error).message}`);
  }
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(payloadJson)}`;
  const signature = await signer.sign(Buffer.from(signingInput, 'ascii'));

  // ES* must be the fixed-size r||s (RFC 7518 §3.4); a DER signature here would make tokens nobody accepts.
  const expected = EC_SIG_BYTES[alg] ?? (signer.publicKey.asymmetricKeyDetails?.modulusLength ?? 0) / 8;
  if (signature.length !== expected) {
    fail('signer-output', `the signer returned ${signature.length} bytes, ${alg} needs ${expected}`);
  }
  return `${signingInput}.${b64url(signature)}`;
}

export interface JwtSvidHeader {
  readonly alg: JwtSvidAlgorithm;
  readonly kid: string;
  readonly typ?: 'JWT' | 'JOSE';
}

export interface ValidatedJwtSvid {
  readonly id: SpiffeId;
  readonly audience: readonly string[];
  readonly expiresAt: Date;
  /** All claims of the token, as JSON. */
  readonly claims: Record<string, unknown>;
  readonly header: JwtSvidHeader;
}

export interface ValidateJwtSvidOptions {
  now?: Date;
  /** Leeway in seconds for exp/nbf/iat; default 60, as go-jose allows. */
  clockTolerance?: number;
}

function decodeJsonPart(part: string, reason: JwtSvidReason, what: string): JsonObject {
  return decodeJwsJsonSegment(part, what, (detail) => fail(reason, detail));
}

function keyFits(alg: JwtSvidAlgorithm, key: KeyObject): boolean {
  if (alg.startsWith('ES')) return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === EC_CURVE[alg];
  return key.asymmetricKeyType === 'rsa';
}

function audienceOf(aud: unknown): string[] {
  if (aud === undefined) fail('missing-aud', 'the token has no aud claim');
  const list = typeof aud === 'string' ? [aud] : aud;
  if (!Array.isArray(list) || list.length === 0 || list.some((a) => typeof a !== 'string')) {
    fail('missing-aud', 'aud must be a string or a non-empty array of strings');
  }
  return list as string[];
}

function numericDate(v: unknown, claim: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail('bad-claim', `${claim} must be a NumericDate`);
  return v;
}

/**
 * Validates a JWT-SVID for `audience` (a string, or several any one of which
 * is accepted). Throws JwtSvidError with the reason; never anything else for
 * bad input.
 */
export async function validateJwtSvid(
  token: string,
  bundles: JwtBundleSource,
  audience: string | readonly string[],
  opts: ValidateJwtSvidOptions = {},
): Promise<ValidatedJwtSvid> {
  const nowMs = (opts.now ?? new Date()).getTime();
  const leeway = opts.clockTolerance ?? 60;
  const accepted = typeof audience === 'string' ? [audience] : [...audience];
  if (accepted.length === 0 || accepted.some((a) => typeof a !== 'string' || a.length === 0)) {
    throw new TypeError('validateJwtSvid needs the audience the validator identifies with');
  }

  if (typeof token !== 'string') fail('malformed', 'the token is not a string');
  if (token.length > MAX_TOKEN_CHARS) fail('malformed', `the token is longer than ${MAX_TOKEN_CHARS} characters`);
  const parts = token.split('.');
  if (parts.length === 5) fail('not-compact-jws', 'the token is a JWE; JWT-SVIDs are JWS only');
  if (parts.length !== 3) fail('not-compact-jws', `the token has ${parts.length} parts, a compact JWS has 3`);
  const [h, p, s] = parts as [string, string, string];

  // Header first: alg and the permitted parameters decide whether the rest is looked at (§4).
  const header = decodeJsonPart(h, 'bad-header', 'header');
  for (const name of Object.keys(header)) {
    if (!ALLOWED_HEADER.has(name)) fail('forbidden-header', `header parameter "${name.slice(0, 40)}" is not allowed in a JWT-SVID`);
  }
  const alg = header.alg;
  if (!isAlgorithm(alg)) fail('unsupported-alg', `alg ${JSON.stringify(typeof alg === 'string' ? alg.slice(0, 20) : alg ?? null)} is not allowed`);
  const typ = header.typ;
  if (typ !== undefined && typ !== 'JWT' && typ !== 'JOSE') fail('bad-typ', 'typ must be JWT or JOSE when present');
  const kid = header.kid;
  // kid is optional in the standard, but go-spiffe and SPIRE refuse tokens without it (spiffe#358).
  if (kid === undefined) fail('missing-kid', 'the token has no kid');
  if (typeof kid !== 'string' || kid.length === 0) fail('bad-header', 'kid must be a non-empty string');
  if (s.length === 0 || !B64URL.test(s)) fail('malformed', 'the signature is not base64url');

  const claims = decodeJsonPart(p, 'malformed', 'payload');
  const sub = claims.sub;
  if (sub === undefined) fail('missing-sub', 'the token has no sub claim');
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(sub as string);
  } catch (err) {
    return fail('invalid-sub', `sub is not a SPIFFE ID: ${(err as Error).message}`);
  }

  // The key comes from the bundle of the subject's own trust domain, never another.
  const bundle = bundles.bundleFor(id.trustDomain);
  if (!bundle) fail('no-bundle', `no bundle for trust domain ${id.trustDomain.name}`);
  const key = bundle.jwtAuthority(kid);
  if (!key) fail('unknown-kid', `trust domain ${id.trustDomain.name} has no JWT authority ${JSON.stringify(kid.slice(0, 80))}`);
  if (!keyFits(alg, key)) fail('alg-key-mismatch', `alg ${alg} does not fit the ${key.asymmetricKeyType} key ${JSON.stringify(kid)}`);

  try {
    await compactVerify(token, key, { algorithms: [alg] });
  } catch (err) {
    if (err instanceof joseErrors.JWSSignatureVerificationFailed) fail('bad-signature', 'the signature does not verify');
    if (err instanceof joseErrors.JOSEError) fail('malformed', err.message);
    throw err;
  }

  const aud = audienceOf(claims.aud);
  if (!aud.some((a) => accepted.includes(a))) fail('wrong-aud', `the token is not for ${JSON.stringify(accepted)}`);
  if (claims.exp === undefined) fail('missing-exp', 'the token has no exp claim');
  const exp = numericDate(claims.exp, 'exp');
  const now = nowMs / 1000;
  if (now >= exp + leeway) fail('expired', `the token expired at ${new Date(exp * 1000).toISOString()}`);
  if (claims.nbf !== undefined && now + leeway < numericDate(claims.nbf, 'nbf')) fail('not-yet-valid', 'the token is not valid yet (nbf)');
  if (claims.iat !== undefined && now + leeway < numericDate(claims.iat, 'iat')) fail('not-yet-valid', 'the token was issued in the future (iat)');

  return {
    id,
    audience: aud,
    expiresAt: new Date(exp * 1000),
    // Plain objects for callers (duplicates were refused above, so JSON.parse sees the same document).
    claims: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>,
    header: { alg, kid, ...(typ !== undefined ? { typ } : {}) },
  };
}
