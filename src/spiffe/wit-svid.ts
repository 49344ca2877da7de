/**
 * WIT-SVIDs (SPIFFE standards/WIT-SVID.md, a profile of the WIMSE Workload
 * Identity Token): a compact JWS with header {alg, kid, typ: "wit+jwt"} and
 * claims sub (the workload's SPIFFE ID), exp, cnf.jwk (the workload's public
 * key, with its `alg`), and jti/nbf/iat. It binds a key to an identity and
 * is never a bearer token: a verifier must also get proof of possession of
 * the `cnf` key (WIMSE WPT or HTTP signatures), which is outside this module.
 *
 * keel signs WITs with the trust domain's JWT keys (in the HSM) but under a key
 * ID of their own, `wit-<JWT kid>`, and publishes them in WIT bundles with
 * `use: "wit-svid"`: the standard wants each kid unique across JWT-SVID and
 * WIT-SVID entries, and the distinct kid and `typ` keep a WIT from being taken
 * for a JWT-SVID (no JWT-SVID key answers to a `wit-` kid, and JWT-SVID
 * validators refuse typ wit+jwt) and the other way round.
 */
import { createHash, createPublicKey, randomBytes, type JsonWebKey, type KeyObject } from 'node:crypto';
import { compactVerify, errors as joseErrors } from 'jose';
import { WitSvidError, type WitSvidReason } from './errors.js';
import { SpiffeId, type TrustDomain } from './id.js';
import { decodeJwsJsonSegment, isJsonObject, parseStrictJson, type JsonObject } from './json.js';
import { JWT_SVID_ALGORITHMS, type JwtSvidAlgorithm } from './jwt-svid.js';
import type { Signer } from './signer.js';

/** Defined with the other SVID errors; re-exported for callers of this module. */
export { WitSvidError, type WitSvidReason } from './errors.js';

export const WIT_SVID_TYP = 'wit+jwt';
export const WIT_SVID_USE = 'wit-svid';
/** §2.3 and §3.2: the same nine algorithms as JWT-SVID, for the signature and for cnf.jwk.alg. */
export const WIT_SVID_ALGORITHMS = JWT_SVID_ALGORITHMS;
export type WitSvidAlgorithm = JwtSvidAlgorithm;

function fail(reason: WitSvidReason, detail: string): never {
  throw new WitSvidError(reason, detail);
}

const b64url = (data: string | Uint8Array): string => Buffer.from(data).toString('base64url');
const B64URL = /^[A-Za-z0-9_-]+$/;
const MAX_TOKEN_CHARS = 64 * 1024;
const ALLOWED_HEADER = new Set(['alg', 'kid', 'typ']);
const EC_ALG_CURVE: Partial<Record<WitSvidAlgorithm, { jwk: string; node: string; sig: number }>> = {
  ES256: { jwk: 'P-256', node: 'prime256v1', sig: 64 },
  ES384: { jwk: 'P-384', node: 'secp384r1', sig: 96 },
  ES512: { jwk: 'P-521', node: 'secp521r1', sig: 132 },
};

function isAlgorithm(alg: unknown): alg is WitSvidAlgorithm {
  return typeof alg === 'string' && (WIT_SVID_ALGORITHMS as readonly string[]).includes(alg);
}

/** The WIT key ID of a JWT signing key: its own kid space, so no bundle entry shares one (§6.1). */
export function witKeyId(jwtKid: string): string {
  if (typeof jwtKid !== 'string' || jwtKid.length === 0) fail('bad-mint-input', 'the signing key has no key ID');
  return `wit-${jwtKid}`;
}

/** Whether `key` can verify `alg` signatures (EC curve, or RSA of at least 2048 bits). */
function keyFits(alg: WitSvidAlgorithm, key: KeyObject): boolean {
  const ec = EC_ALG_CURVE[alg];
  if (ec) return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === ec.node;
  return key.asymmetricKeyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048;
}

/** A public JWK holding `alg`, as cnf.jwk carries it. */
export interface CnfJwk {
  readonly kty: 'EC' | 'RSA';
  readonly alg: WitSvidAlgorithm;
  readonly crv?: string;
  readonly x?: string;
  readonly y?: string;
  readonly n?: string;
  readonly e?: string;
}

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

/**
 * Checks a workload public key for cnf (RFC 7800 §3.2; WIT-SVID §3.2): a public
 * EC or RSA JWK whose `alg` is allowed and fits the key. Returns only the
 * public members (and the KeyObject); anything private is refused, not dropped.
 */
export function checkCnfJwk(input: unknown): { jwk: CnfJwk; key: KeyObject } {
  if (!isJsonObject(input as JsonObject) || Array.isArray(input)) fail('bad-cnf', 'cnf.jwk must be a JSON object');
  const j = input as Record<string, unknown>;
  for (const m of PRIVATE_MEMBERS) if (j[m] !== undefined) fail('bad-cnf', `cnf.jwk holds the private member "${m}"`);
  const alg = j.alg;
  if (alg === undefined) fail('bad-cnf', 'cnf.jwk has no alg');
  if (!isAlgorithm(alg)) fail('bad-cnf', `cnf.jwk.alg ${JSON.stringify(typeof alg === 'string' ? alg.slice(0, 20) : alg)} is not allowed`);
  let jwk: CnfJwk;
  if (j.kty === 'EC') {
    if (j.crv !== 'P-256' && j.crv !== 'P-384' && j.crv !== 'P-521') fail('bad-cnf', 'cnf.jwk.crv must be P-256, P-384 or P-521');
    for (const m of ['x', 'y']) if (typeof j[m] !== 'string' || !B64URL.test(j[m] as string)) fail('bad-cnf', `cnf.jwk.${m} must be a base64url string`);
    jwk = { kty: 'EC', crv: j.crv as string, x: j.x as string, y: j.y as string, alg };
  } else if (j.kty === 'RSA') {
    for (const m of ['n', 'e']) if (typeof j[m] !== 'string' || !B64URL.test(j[m] as string)) fail('bad-cnf', `cnf.jwk.${m} must be a base64url string`);
    jwk = { kty: 'RSA', n: j.n as string, e: j.e as string, alg };
  } else {
    return fail('bad-cnf', `cnf.jwk.kty must be EC or RSA, got ${JSON.stringify(typeof j.kty === 'string' ? j.kty.slice(0, 20) : j.kty ?? null)}`);
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: jwk as unknown as JsonWebKey, format: 'jwk' });
  } catch (e) {
    return fail('bad-cnf', `cnf.jwk is not a usable public key: ${(e as Error).message}`);
  }
  if (!keyFits(alg, key)) fail('bad-cnf', `cnf.jwk.alg ${alg} does not fit the ${jwk.kty}${jwk.crv ? ` ${jwk.crv}` : ''} key`);
  return { jwk, key };
}

export interface MintWitSvidInput {
  readonly signer: Signer;
  readonly sub: SpiffeId;
  /** The workload's public key, with `alg` (checkCnfJwk). */
  readonly cnfJwk: unknown;
  readonly expiresAt: Date;
  readonly issuedAt?: Date;
  /** Default: issuedAt. A verifier with a slow clock is what clock_skew_tolerance on the server is for. */
  readonly notBefore?: Date;
  /** Default: 128 random bits, base64url. */
  readonly jti?: string;
}

function secondsOf(d: Date, what: string): number {
  if (!(d instanceof Date) || Number.isNaN(d.getTime())) fail('bad-mint-input', `${what} is not a valid Date`);
  return Math.floor(d.getTime() / 1000);
}

/** Mints a WIT-SVID signed by `signer` under kid `witKeyId(signer.keyId)`. */
export async function mintWitSvid(input: MintWitSvidInput): Promise<{ token: string; kid: string; jti: string; cnf: CnfJwk }> {
  const { signer, sub } = input;
  if (!(sub instanceof SpiffeId)) fail('bad-mint-input', 'sub must be a SpiffeId');
  if (sub.path === '') fail('bad-mint-input', 'sub must be a workload ID, not a trust domain ID');
  const alg = signer.algorithm;
  if (!isAlgorithm(alg)) fail('bad-mint-input', `signer algorithm ${String(alg)} is not allowed for WIT-SVIDs`);
  const kid = witKeyId(signer.keyId);
  const cnf = checkCnfJwk(input.cnfJwk).jwk;
  const iat = secondsOf(input.issuedAt ?? new Date(), 'issuedAt');
  const nbf = input.notBefore ? secondsOf(input.notBefore, 'notBefore') : iat;
  const exp = secondsOf(input.expiresAt, 'expiresAt');
  if (exp <= iat || exp <= nbf) fail('bad-mint-input', 'expiresAt must be after issuedAt and notBefore');
  const jti = input.jti ?? randomBytes(16).toString('base64url');
  if (typeof jti !== 'string' || jti.length === 0 || jti.length > 256) fail('bad-mint-input', 'jti must be a non-empty string of at most 256 characters');

  const header = { alg, kid, typ: WIT_SVID_TYP };
  const claims = { sub: sub.toString(), exp, nbf, iat, jti, cnf: { jwk: cnf } };
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = await signer.sign(Buffer.from(signingInput, 'ascii'));
  // ES* must be r||s of fixed size (RFC 7518 §3.4).
  const expected = EC_ALG_CURVE[alg]?.sig ?? (signer.publicKey.asymmetricKeyDetails?.modulusLength ?? 0) / 8;
  if (signature.length !== expected) fail('signer-output', `the signer returned ${signature.length} bytes, ${alg} needs ${expected}`);
  return { token: `${signingInput}.${b64url(signature)}`, kid, jti, cnf };
}

// ---- WIT bundles -------------------------------------------------------------

/** The WIT authorities of a trust domain: WIT kid → public key. */
export type WitAuthorities = ReadonlyMap<string, KeyObject>;

/** The WIT authorities that go with a trust domain's JWT authorities (keel signs WITs with its JWT keys). */
export function witAuthoritiesOf(jwtAuthorities: Iterable<readonly [string, KeyObject]>): Map<string, KeyObject> {
  return new Map([...jwtAuthorities].map(([kid, key]) => [witKeyId(kid), key] as const));
}

/** A WIT bundle as the Workload API carries it (WITBundlesResponse): a JWKS whose keys have use "wit-svid". */
export function witBundleJson(authorities: WitAuthorities): string {
  const keys = [...authorities].map(([kid, key]) => {
    const jwk = key.export({ format: 'jwk' });
    delete jwk.d;
    const { kty, ...rest } = jwk;
    return { kty, kid, use: WIT_SVID_USE, ...rest };
  });
  return JSON.stringify({ keys });
}

/** Reads the `wit-svid` keys of a JWKS (other uses are skipped, §6.2); a kid twice is refused. */
export function witAuthoritiesFromJson(json: string): Map<string, KeyObject> {
  let doc: unknown;
  try {
    doc = parseStrictJson(json);
  } catch (e) {
    return fail('malformed', `the WIT bundle is not JSON: ${(e as Error).message}`);
  }
  if (!isJsonObject(doc as JsonObject) || !Array.isArray((doc as JsonObject).keys)) fail('malformed', 'a WIT bundle is a JSON object with a "keys" array');
  const out = new Map<string, KeyObject>();
  for (const k of (doc as { keys: unknown[] }).keys) {
    if (!isJsonObject(k as JsonObject) || (k as JsonObject).use !== WIT_SVID_USE) continue;
    const { kid, use: _use, ...jwk } = k as Record<string, unknown>;
    if (typeof kid !== 'string' || kid.length === 0) fail('missing-kid', 'a wit-svid key has no kid');
    if (out.has(kid)) fail('bad-header', `kid ${JSON.stringify(kid)} appears twice in the WIT bundle`);
    for (const m of PRIVATE_MEMBERS) if (jwk[m] !== undefined) fail('malformed', `WIT bundle key ${kid} holds private member "${m}"`);
    try {
      out.set(kid, createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }));
    } catch (e) {
      fail('malformed', `WIT bundle key ${kid} is not a public key: ${(e as Error).message}`);
    }
  }
  return out;
}

// ---- validation ----------------------------------------------------------------

export interface ValidatedWitSvid {
  readonly id: SpiffeId;
  readonly expiresAt: Date;
  readonly kid: string;
  readonly alg: WitSvidAlgorithm;
  /** The workload key a proof of possession must be checked against. */
  readonly cnfKey: KeyObject;
  readonly cnfJwk: CnfJwk;
  readonly jti?: string;
  readonly claims: Record<string, unknown>;
}

export interface ValidateWitSvidOptions {
  readonly now?: Date;
  /** Leeway in seconds for exp and nbf; default 60. */
  readonly clockTolerance?: number;
}

function decodePart(part: string, reason: WitSvidReason, what: string): JsonObject {
  return decodeJwsJsonSegment(part, what, (detail) => fail(reason, detail));
}

function numericDate(v: unknown, claim: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail('bad-claim', `${claim} must be a NumericDate`);
  return v;
}

/**
 * Validates a WIT-SVID against the WIT authorities of its subject's trust
 * domain. This checks the token only: accepting it also needs a proof of
 * possession of `cnfKey` (§4, §7.1), which the caller must verify.
 */
export async function validateWitSvid(token: string, authoritiesFor: (td: TrustDomain) => WitAuthorities | undefined, opts: ValidateWitSvidOptions = {}): Promise<ValidatedWitSvid> {
  const now = (opts.now ?? new Date()).getTime() / 1000;
  const leeway = opts.clockTolerance ?? 60;
  if (typeof token !== 'string') fail('malformed', 'the token is not a string');
  if (token.length > MAX_TOKEN_CHARS) fail('malformed', `the token is longer than ${MAX_TOKEN_CHARS} characters`);
  const parts = token.split('.');
  if (parts.length !== 3) fail('not-compact-jws', `the token has ${parts.length} parts, a compact JWS has 3`);
  const [h, p, s] = parts as [string, string, string];

  const header = decodePart(h, 'bad-header', 'header');
  for (const name of Object.keys(header)) if (!ALLOWED_HEADER.has(name)) fail('forbidden-header', `header parameter "${name.slice(0, 40)}" is not expected in a WIT-SVID`);
  const alg = header.alg;
  if (!isAlgorithm(alg)) fail('unsupported-alg', `alg ${JSON.stringify(typeof alg === 'string' ? alg.slice(0, 20) : alg ?? null)} is not allowed`);
  if (header.typ !== WIT_SVID_TYP) fail('bad-typ', `typ must be "${WIT_SVID_TYP}"`);
  const kid = header.kid;
  if (kid === undefined) fail('missing-kid', 'the token has no kid (mandatory for WIT-SVIDs)');
  if (typeof kid !== 'string' || kid.length === 0) fail('bad-header', 'kid must be a non-empty string');
  if (!B64URL.test(s)) fail('malformed', 'the signature is not base64url');

  const claims = decodePart(p, 'malformed', 'payload');
  if (claims.sub === undefined) fail('missing-sub', 'the token has no sub claim');
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(claims.sub as string);
  } catch (e) {
    return fail('invalid-sub', `sub is not a SPIFFE ID: ${(e as Error).message}`);
  }
  if (id.path === '') fail('invalid-sub', 'sub is a trust domain ID, not a workload');

  const authorities = authoritiesFor(id.trustDomain);
  if (!authorities) fail('no-bundle', `no WIT bundle for trust domain ${id.trustDomain.name}`);
  const key = authorities.get(kid);
  if (!key) fail('unknown-kid', `trust domain ${id.trustDomain.name} has no WIT authority ${JSON.stringify(kid.slice(0, 80))}`);
  if (!keyFits(alg, key)) fail('alg-key-mismatch', `alg ${alg} does not fit the ${key.asymmetricKeyType} key ${JSON.stringify(kid)}`);
  try {
    await compactVerify(token, key, { algorithms: [alg] });
  } catch (e) {
    if (e instanceof joseErrors.JWSSignatureVerificationFailed) fail('bad-signature', 'the signature does not verify');
    if (e instanceof joseErrors.JOSEError) fail('malformed', e.message);
    throw e;
  }

  if (claims.exp === undefined) fail('missing-exp', 'the token has no exp claim');
  const exp = numericDate(claims.exp, 'exp');
  if (now >= exp + leeway) fail('expired', `the token expired at ${new Date(exp * 1000).toISOString()}`);
  if (claims.nbf !== undefined && now + leeway < numericDate(claims.nbf, 'nbf')) fail('not-yet-valid', 'the token is not valid yet (nbf)');
  if (claims.iat !== undefined) numericDate(claims.iat, 'iat');
  if (claims.jti !== undefined && (typeof claims.jti !== 'string' || claims.jti.length === 0)) fail('bad-claim', 'jti must be a non-empty string');
  const cnf = claims.cnf;
  if (cnf === undefined) fail('missing-cnf', 'the token has no cnf claim');
  if (!isJsonObject(cnf) || cnf.jwk === undefined) fail('missing-cnf', 'cnf must be an object with a jwk member');
  const { jwk, key: cnfKey } = checkCnfJwk(cnf.jwk);

  return {
    id,
    expiresAt: new Date(exp * 1000),
    kid,
    alg,
    cnfKey,
    cnfJwk: jwk,
    ...(typeof claims.jti === 'string' ? { jti: claims.jti } : {}),
    claims: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>,
  };
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of a cnf key: how audit lines name the workload key. */
export function cnfThumbprint(jwk: CnfJwk): string {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { e: jwk.e, kty: jwk.kty, n: jwk.n };
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}
