/**
 * SPIFFE bundles (SPIFFE_Trust_Domain_and_Bundle.md): the X.509 and JWT
 * authorities of one trust domain, their JWKS form, the DER and JWT-bundle
 * forms the Workload API carries, and bundle maps keyed by trust domain.
 */
import { X509Certificate, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { BundleError } from './errors.js';
import { TrustDomain } from './id.js';
import { isJsonObject, parseStrictJson, StrictJsonError, type JsonObject, type JsonValue } from './json.js';
import { concatDer, DerSplitError, parseDerCertificates } from './der.js';

export const X509_SVID_USE = 'x509-svid';
export const JWT_SVID_USE = 'jwt-svid';

/** Where a validator finds the bundle of an SVID's trust domain. */
export interface BundleSource {
  bundleFor(td: TrustDomain): TrustBundle | undefined;
}
export type X509BundleSource = BundleSource;
export type JwtBundleSource = BundleSource;

export interface TrustBundleInit {
  trustDomain: TrustDomain | string;
  x509Authorities?: Iterable<X509Certificate>;
  /** kid → public key. Pairs, a Map or a plain object. */
  jwtAuthorities?: Iterable<readonly [string, KeyObject]> | Readonly<Record<string, KeyObject>>;
  /** spiffe_sequence: a 64-bit counter, hence bigint (numbers are accepted). */
  sequence?: bigint | number;
  /** spiffe_refresh_hint, in seconds. */
  refreshHint?: number;
}

/** The curves that JWT-SVID's ES256/384/512 use. */
const JWT_EC_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);

function checkJwtAuthority(kid: string, key: KeyObject): void {
  if (typeof kid !== 'string' || kid.length === 0) throw new BundleError('missing-kid', 'a JWT authority needs a non-empty key ID');
  if (key?.type !== 'public') throw new BundleError('unsupported-key', `JWT authority ${JSON.stringify(kid)} is not a public key`);
  const t = key.asymmetricKeyType;
  if (t === 'rsa') return;
  if (t === 'ec' && JWT_EC_CURVES.has(key.asymmetricKeyDetails?.namedCurve ?? '')) return;
  throw new BundleError('unsupported-key', `JWT authority ${JSON.stringify(kid)} is a ${t ?? 'unknown'} key; JWT-SVID allows RSA and EC P-256/384/521`);
}

function toSequence(v: bigint | number | undefined): bigint | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v === 'bigint' && v >= 0n && v < 1n << 64n) return v;
  throw new BundleError('bad-sequence', 'spiffe_sequence must be an unsigned 64-bit integer');
}

function toRefreshHint(v: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (Number.isSafeInteger(v) && v >= 0) return v;
  throw new BundleError('bad-refresh-hint', 'spiffe_refresh_hint must be a non-negative integer number of seconds');
}

/** An immutable bundle of one trust domain. */
export class TrustBundle implements BundleSource {
  readonly x509Authorities: readonly X509Certificate[];
  readonly #jwt: ReadonlyMap<string, KeyObject>;

  private constructor(
    readonly trustDomain: TrustDomain,
    x509: X509Certificate[],
    jwt: Map<string, KeyObject>,
    readonly sequence: bigint | undefined,
    readonly refreshHint: number | undefined,
  ) {
    this.x509Authorities = Object.freeze(x509);
    this.#jwt = jwt;
    Object.freeze(this);
  }

  static create(init: TrustBundleInit): TrustBundle {
    let td: TrustDomain;
    try {
      td = typeof init.trustDomain === 'string' ? TrustDomain.parse(init.trustDomain) : init.trustDomain;
    } catch (err) {
      throw new BundleError('trust-domain', (err as Error).message);
    }
    if (!(td instanceof TrustDomain)) throw new BundleError('trust-domain', 'not a TrustDomain');
    const x509: X509Certificate[] = [];
    const seen = new Set<string>();
    for (const cert of init.x509Authorities ?? []) {
      if (!(cert instanceof X509Certificate)) throw new BundleError('bad-certificate', 'X.509 authorities must be X509Certificate objects');
      // The same CA listed twice is one authority (go-spiffe does the same).
      const key = cert.raw.toString('base64');
      // Every authority must be publishable as a JWK (bundleToJwks); refuse now rather than at publication.
      try {
        cert.publicKey.export({ format: 'jwk' });
      } catch (err) {
        throw new BundleError('unsupported-key', `X.509 authority ${cert.subject || cert.fingerprint256} has a key that cannot be a JWK (${(err as Error).message})`);
      }
      if (!seen.has(key)) {
        seen.add(key);
        x509.push(cert);
      }
    }
    const jwt = new Map<string, KeyObject>();
    const pairs: Iterable<readonly [string, KeyObject]> =
      init.jwtAuthorities === undefined
        ? []
        : Symbol.iterator in init.jwtAuthorities
          ? (init.jwtAuthorities as Iterable<readonly [string, KeyObject]>)
          : Object.entries(init.jwtAuthorities as Record<string, KeyObject>);
    for (const [kid, key] of pairs) {
      checkJwtAuthority(kid, key);
      if (jwt.has(kid)) throw new BundleError('duplicate-kid', `key ID ${JSON.stringify(kid)} appears twice`);
      jwt.set(kid, key);
    }
    return new TrustBundle(td, x509, jwt, toSequence(init.sequence), toRefreshHint(init.refreshHint));
  }

  /** A copy with some fields replaced. */
  with(changes: Omit<TrustBundleInit, 'trustDomain'>): TrustBundle {
    return TrustBundle.create({
      trustDomain: this.trustDomain,
      x509Authorities: changes.x509Authorities ?? this.x509Authorities,
      jwtAuthorities: changes.jwtAuthorities ?? this.#jwt,
      ...('sequence' in changes ? { sequence: changes.sequence } : this.sequence !== undefined ? { sequence: this.sequence } : {}),
      ...('refreshHint' in changes
        ? { refreshHint: changes.refreshHint }
        : this.refreshHint !== undefined
          ? { refreshHint: this.refreshHint }
          : {}),
    });
  }

  /** kid → key; a fresh copy, the bundle itself cannot be changed. */
  get jwtAuthorities(): Map<string, KeyObject> {
    return new Map(this.#jwt);
  }

  jwtAuthority(kid: string): KeyObject | undefined {
    return this.#jwt.get(kid);
  }

  get jwtKeyIds(): string[] {
    return [...this.#jwt.keys()];
  }

  /** No usable keys: every SVID of this trust domain is to be refused (§4.1.3). */
  get isEmpty(): boolean {
    return this.x509Authorities.length === 0 && this.#jwt.size === 0;
  }

  bundleFor(td: TrustDomain): TrustBundle | undefined {
    return td.equals(this.trustDomain) ? this : undefined;
  }
}

/** Aliases for readers who think of the two halves separately. */
export type X509Bundle = TrustBundle;
export type JwtBundle = TrustBundle;

// ---------- JWKS form ----------

export interface BundleJwk {
  kty: string;
  use: typeof X509_SVID_USE | typeof JWT_SVID_USE;
  kid?: string;
  x5c?: [string];
  [param: string]: unknown;
}
export interface BundleJwks {
  spiffe_sequence?: number | bigint;
  spiffe_refresh_hint?: number;
  keys: BundleJwk[];
}

function publicJwk(key: KeyObject): JsonWebKey {
  const jwk = key.export({ format: 'jwk' });
  // Only public members ever reach a bundle.
  delete jwk.d;
  return jwk;
}

function x509Jwk(cert: X509Certificate): BundleJwk {
  const { kty, ...params } = publicJwk(cert.publicKey);
  return { kty: kty ?? '', use: X509_SVID_USE, x5c: [cert.raw.toString('base64')], ...params };
}

function jwtJwk(kid: string, key: KeyObject): BundleJwk {
  const { kty, ...params } = publicJwk(key);
  return { kty: kty ?? '', kid, use: JWT_SVID_USE, ...params };
}

export function bundleToJwks(bundle: TrustBundle, opts: { includeRefreshHint?: boolean } = {}): BundleJwks {
  const out: BundleJwks = { keys: [] };
  if (bundle.sequence !== undefined) {
    out.spiffe_sequence = bundle.sequence <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(bundle.sequence) : bundle.sequence;
  }
  if (bundle.refreshHint !== undefined && opts.includeRefreshHint !== false) out.spiffe_refresh_hint = bundle.refreshHint;
  for (const cert of bundle.x509Authorities) out.keys.push(x509Jwk(cert));
  for (const [kid, key] of bundle.jwtAuthorities) out.keys.push(jwtJwk(kid, key));
  return out;
}

/** JSON text of `bundleToJwks`, exact for sequence numbers beyond 2^53. */
export function bundleToJwksJson(bundle: TrustBundle, opts: { includeRefreshHint?: boolean } = {}): string {
  const { spiffe_sequence, ...rest } = bundleToJwks(bundle, opts);
  const body = JSON.stringify(rest);
  return spiffe_sequence === undefined ? body : `{"spiffe_sequence":${spiffe_sequence.toString()},${body.slice(1)}`;
}

const MAX_JSON_CHARS = 4 * 1024 * 1024;

function parseJsonInput(input: string | Uint8Array | object): JsonValue {
  if (typeof input === 'object' && !(input instanceof Uint8Array)) return input as JsonValue;
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
  if (text.length > MAX_JSON_CHARS) throw new BundleError('malformed-json', `document longer than ${MAX_JSON_CHARS} characters`);
  try {
    return parseStrictJson(text);
  } catch (err) {
    if (err instanceof StrictJsonError) {
      throw new BundleError(err.reason === 'duplicate-key' ? 'duplicate-key' : 'malformed-json', err.message);
    }
    throw err;
  }
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const B64URL = /^[A-Za-z0-9_-]*$/;

/** The key members of a JWK, checked for shape; private members are refused. */
function keyMembers(jwk: JsonObject, where: string): JsonWebKey | undefined {
  const str = (name: string): string => {
    const v = jwk[name];
    if (typeof v !== 'string' || v.length === 0 || !B64URL.test(v)) throw new BundleError('bad-jwk', `${where}: "${name}" must be base64url`);
    return v;
  };
  for (const priv of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']) {
    if (priv in jwk) throw new BundleError('bad-jwk', `${where}: carries the private or secret member "${priv}"`);
  }
  switch (jwk.kty) {
    case 'EC': {
      const crv = jwk.crv;
      if (crv !== 'P-256' && crv !== 'P-384' && crv !== 'P-521') return undefined; // a curve we do not know: ignored
      return { kty: 'EC', crv, x: str('x'), y: str('y') };
    }
    case 'RSA':
      return { kty: 'RSA', n: str('n'), e: str('e') };
    case 'OKP': {
      const crv = jwk.crv;
      if (crv !== 'Ed25519' && crv !== 'Ed448') return undefined;
      return { kty: 'OKP', crv, x: str('x') };
    }
    default:
      return undefined; // unknown key type: the whole JWK is ignored (§4.2.1)
  }
}

function importJwk(members: JsonWebKey, where: string): KeyObject {
  try {
    return createPublicKey({ key: members, format: 'jwk' });
  } catch (err) {
    throw new BundleError('bad-jwk', `${where}: key material does not parse (${(err as Error).message})`);
  }
}


function readBundleObject(td: TrustDomain, doc: JsonValue): TrustBundle {
  if (!isJsonObject(doc)) throw new BundleError('not-an-object', 'a SPIFFE bundle is a JSON object');
  const keys = doc.keys;
  if (!Array.isArray(keys)) throw new BundleError('missing-keys', 'the "keys" member must be present and an array');

  const seqRaw = doc.spiffe_sequence;
  let sequence: bigint | undefined;
  if (seqRaw !== undefined) {
    if (!(typeof seqRaw === 'bigint' || (typeof seqRaw === 'number' && Number.isInteger(seqRaw)))) {
      throw new BundleError('bad-sequence', 'spiffe_sequence must be an integer');
    }
    sequence = toSequence(seqRaw);
  }
  const hintRaw = doc.spiffe_refresh_hint;
  if (hintRaw !== undefined && typeof hintRaw !== 'number') throw new BundleError('bad-refresh-hint', 'spiffe_refresh_hint must be an integer');
  const refreshHint = toRefreshHint(hintRaw);

  const x509: X509Certificate[] = [];
  const jwt: [string, KeyObject][] = [];
  const kids = new Set<string>();
  keys.forEach((jwk, i) => {
    const where = `keys[${i}]`;
    if (!isJsonObject(jwk)) throw new BundleError('bad-jwk', `${where} is not an object`);
    const use = jwk.use;
    // A missing or unknown `use` makes the whole JWK ignored (§4.2.2), so does an unknown `kty` (§4.2.1).
    if (use !== X509_SVID_USE && use !== JWT_SVID_USE) return;
    if (typeof jwk.kty !== 'string') throw new BundleError('bad-jwk', `${where}: "kty" must be set`);
    const members = keyMembers(jwk, where);
    if (members === undefined) return;

    if (use === X509_SVID_USE) {
      const x5c = jwk.x5c;
      if (!Array.isArray(x5c)) throw new BundleError('x5c-count', `${where}: an x509-svid key needs "x5c" with exactly one certificate`);
      if (x5c.length !== 1) throw new BundleError('x5c-count', `${where}: "x5c" holds ${x5c.length} certificates, an x509-svid key has exactly one`);
      const b64 = x5c[0];
      if (typeof b64 !== 'string' || !B64.test(b64)) throw new BundleError('bad-certificate', `${where}: "x5c"[0] is not base64`);
      let cert: X509Certificate;
      try {
        cert = new X509Certificate(Buffer.from(b64, 'base64'));
      } catch (err) {
        throw new BundleError('bad-certificate', `${where}: "x5c"[0] is not a certificate (${(err as Error).message})`);
      }
      let certKey: KeyObject;
      try {
        certKey = cert.publicKey;
      } catch (err) {
        throw new BundleError('bad-certificate', `${where}: the key in "x5c"[0] does not parse (${(err as Error).message})`);
      }
      if (!certKey.equals(importJwk(members, where))) {
        throw new BundleError('x5c-key-mismatch', `${where}: the key in "x5c" is not the key of the JWK`);
      }
      x509.push(cert);
      return;
    }

    const kid = jwk.kid;
    if (typeof kid !== 'string' || kid.length === 0) throw new BundleError('missing-kid', `${where}: a jwt-svid key needs a "kid"`);
    if (kids.has(kid)) throw new BundleError('duplicate-kid', `${where}: key ID ${JSON.stringify(kid)} appears twice`);
    kids.add(kid);
    // Keys JWT-SVID's algorithms cannot use (Ed25519) are ignored rather than refused.
    if (members.kty === 'OKP') return;
    jwt.push([kid, importJwk(members, where)]);
  });

  return TrustBundle.create({
    trustDomain: td,
    x509Authorities: x509,
    jwtAuthorities: jwt,
    ...(sequence !== undefined ? { sequence } : {}),
    ...(refreshHint !== undefined ? { refreshHint } : {}),
  });
}

function toTrustDomain(td: TrustDomain | string): TrustDomain {
  if (td instanceof TrustDomain) return td;
  try {
    return TrustDomain.parse(td);
  } catch (err) {
    throw new BundleError('trust-domain', (err as Error).message);
  }
}

/**
 * Reads a SPIFFE bundle (JWKS). Text is parsed with duplicate-member
 * detection; an already-parsed object is taken as is.
 */
export function bundleFromJwks(td: TrustDomain | string, input: string | Uint8Array | object): TrustBundle {
  return readBundleObject(toTrustDomain(td), parseJsonInput(input));
}

// ---------- Workload API forms ----------

/** The X.509 authorities as concatenated DER (X509SVID.bundle, X509BundlesResponse). */
export function bundleX509Der(bundle: TrustBundle): Buffer {
  return concatDer(bundle.x509Authorities);
}

export function bundleFromX509Der(td: TrustDomain | string, der: Uint8Array): TrustBundle {
  const trustDomain = toTrustDomain(td);
  try {
    return TrustBundle.create({ trustDomain, x509Authorities: parseDerCertificates(der, 1024) });
  } catch (err) {
    if (err instanceof DerSplitError) throw new BundleError('malformed-der', err.message);
    throw err;
  }
}

/** JWKS of the JWT authorities only (JWTBundlesResponse). */
export function jwtBundleJson(bundle: TrustBundle): string {
  return JSON.stringify({ keys: [...bundle.jwtAuthorities].map(([kid, key]) => jwtJwk(kid, key)) });
}

/** Reads a JWT bundle: every JWK with a `kid` is a JWT authority unless its `use` says otherwise. */
export function jwtBundleFromJson(td: TrustDomain | string, input: string | Uint8Array | object): TrustBundle {
  const trustDomain = toTrustDomain(td);
  const doc = parseJsonInput(input);
  if (!isJsonObject(doc)) throw new BundleError('not-an-object', 'a JWT bundle is a JSON object');
  if (!Array.isArray(doc.keys)) throw new BundleError('missing-keys', 'the "keys" member must be present and an array');
  const keys = doc.keys.map((k) => (isJsonObject(k) && k.use === undefined ? { ...k, use: JWT_SVID_USE } : k));
  const read = readBundleObject(trustDomain, { keys: keys.filter((k) => !isJsonObject(k) || k.use === JWT_SVID_USE) });
  return read;
}

// ---------- bundle sets and maps ----------

/** Bundles keyed by trust domain; at most one bundle per trust domain. */
export class BundleSet implements BundleSource, Iterable<TrustBundle> {
  readonly #byName: ReadonlyMap<string, TrustBundle>;

  private constructor(byName: Map<string, TrustBundle>) {
    this.#byName = byName;
    Object.freeze(this);
  }

  static of(bundles: Iterable<TrustBundle>): BundleSet {
    const map = new Map<string, TrustBundle>();
    for (const b of bundles) {
      if (!(b instanceof TrustBundle)) throw new BundleError('not-an-object', 'BundleSet holds TrustBundle objects');
      if (map.has(b.trustDomain.name)) {
        throw new BundleError('duplicate-trust-domain', `two bundles for trust domain ${b.trustDomain.name}`);
      }
      map.set(b.trustDomain.name, b);
    }
    return new BundleSet(map);
  }

  bundleFor(td: TrustDomain): TrustBundle | undefined {
    return this.#byName.get(td.name);
  }

  get(td: TrustDomain | string): TrustBundle | undefined {
    return this.#byName.get(toTrustDomain(td).name);
  }

  /** A copy where `bundle` replaces any bundle of its trust domain. */
  with(bundle: TrustBundle): BundleSet {
    const map = new Map(this.#byName);
    map.set(bundle.trustDomain.name, bundle);
    return new BundleSet(map);
  }

  without(td: TrustDomain | string): BundleSet {
    const map = new Map(this.#byName);
    map.delete(toTrustDomain(td).name);
    return new BundleSet(map);
  }

  get size(): number {
    return this.#byName.size;
  }

  get trustDomains(): TrustDomain[] {
    return [...this.#byName.values()].map((b) => b.trustDomain);
  }

  [Symbol.iterator](): Iterator<TrustBundle> {
    return this.#byName.values();
  }
}

/** A SPIFFE bundle map (§5): `{"trust_domains": {name: bundle}}`, refresh hints omitted as §5.1.1 advises. */
export function bundleSetToJson(set: BundleSet): string {
  const parts = [...set].map((b) => `${JSON.stringify(b.trustDomain.name)}:${bundleToJwksJson(b, { includeRefreshHint: false })}`);
  return `{"trust_domains":{${parts.join(',')}}}`;
}

/** Reads a bundle map; duplicate trust-domain keys, even spelled differently (`td` vs `spiffe://td`), are refused. */
export function bundleSetFromJson(input: string | Uint8Array): BundleSet {
  if (typeof input !== 'string' && !(input instanceof Uint8Array)) {
    // Duplicate detection needs the text: an already-parsed object may have lost duplicates.
    throw new BundleError('malformed-json', 'a bundle map is read from its JSON text');
  }
  const doc = parseJsonInput(input);
  if (!isJsonObject(doc)) throw new BundleError('not-an-object', 'a bundle map is a JSON object');
  const tds = doc.trust_domains;
  if (!isJsonObject(tds)) throw new BundleError('not-an-object', 'the "trust_domains" member must be present and an object');
  const bundles: TrustBundle[] = [];
  const names = new Set<string>();
  for (const [name, value] of Object.entries(tds)) {
    const td = toTrustDomain(name);
    if (names.has(td.name)) throw new BundleError('duplicate-trust-domain', `trust domain ${td.name} appears twice`);
    names.add(td.name);
    bundles.push(readBundleObject(td, value));
  }
  return BundleSet.of(bundles);
}
