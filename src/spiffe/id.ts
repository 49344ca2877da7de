/**
 * SPIFFE IDs and trust domains exactly as the SPIFFE-ID standard defines them:
 * scheme `spiffe`, a lowercase trust domain of [a-z0-9._-] (at most 255 bytes),
 * path segments of [a-zA-Z0-9._-] with no empty, `.` or `..` segment, no
 * trailing slash, no percent-encoding, query, fragment, userinfo or port.
 */
import { InvalidSpiffeIdError, InvalidTrustDomainError } from './errors.js';

const SCHEME = 'spiffe://';
/** The standard says implementations must accept IDs up to 2048 bytes. */
export const MAX_SPIFFE_ID_BYTES = 2048;
export const MAX_TRUST_DOMAIN_BYTES = 255;

function isTdChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x5f;
}
function isPathChar(c: number): boolean {
  return (
    (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) ||
    c === 0x2e || c === 0x2d || c === 0x5f
  );
}

function trustDomainProblem(name: string): string | undefined {
  if (name.length === 0) return 'trust domain is empty';
  if (name.length > MAX_TRUST_DOMAIN_BYTES) return `trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (!isTdChar(c)) {
      if (c >= 0x41 && c <= 0x5a) return 'trust domain has an uppercase letter';
      if (c === 0x3a) return 'trust domain has a port';
      if (c === 0x40) return 'trust domain has userinfo';
      return `trust domain has the character ${JSON.stringify(name[i])}, allowed are a-z 0-9 . - _`;
    }
  }
  return undefined;
}

/** Returns why `path` is not a valid SPIFFE ID path ('' is valid: the trust domain ID). */
export function pathProblem(path: string): string | undefined {
  if (path === '') return undefined;
  if (path[0] !== '/') return 'path must start with /';
  let segStart = 1;
  for (let i = 1; i <= path.length; i++) {
    if (i === path.length || path.charCodeAt(i) === 0x2f) {
      const seg = path.slice(segStart, i);
      if (seg.length === 0) return i === path.length ? 'path has a trailing /' : 'path has an empty segment';
      if (seg === '.' || seg === '..') return `path has a ${JSON.stringify(seg)} segment`;
      segStart = i + 1;
      continue;
    }
    const c = path.charCodeAt(i);
    if (!isPathChar(c)) {
      if (c === 0x25) return 'path is percent-encoded';
      if (c === 0x3f) return 'SPIFFE IDs have no query';
      if (c === 0x23) return 'SPIFFE IDs have no fragment';
      return `path has the character ${JSON.stringify(path[i])}, allowed are a-z A-Z 0-9 . - _`;
    }
  }
  return undefined;
}

export class TrustDomain {
  private constructor(readonly name: string) {}

  /** Accepts a bare name (`example.org`) or a trust-domain ID (`spiffe://example.org`). */
  static parse(input: string): TrustDomain {
    if (input.includes(':/')) {
      const id = SpiffeId.parse(input, (reason) => new InvalidTrustDomainError(input, reason));
      if (id.path !== '') throw new InvalidTrustDomainError(input, 'a trust domain ID has no path');
      return id.trustDomain;
    }
    const problem = trustDomainProblem(input);
    if (problem) throw new InvalidTrustDomainError(input, problem);
    return new TrustDomain(input);
  }

  /** @internal used by SpiffeId.parse after validation */
  static fromValidated(name: string): TrustDomain {
    return new TrustDomain(name);
  }

  /** `spiffe://<name>`, the key used in bundle maps and the Workload API. */
  get idString(): string {
    return SCHEME + this.name;
  }

  /** The SPIFFE ID of the trust domain itself (no path), used in CA certificates. */
  id(): SpiffeId {
    return SpiffeId.fromParts(this, '');
  }

  /** A SPIFFE ID in this trust domain; `path` must be valid (`/a/b`). */
  child(path: string): SpiffeId {
    const problem = pathProblem(path);
    if (problem) throw new InvalidSpiffeIdError(this.idString + path, problem);
    return SpiffeId.fromParts(this, path);
  }

  equals(other: TrustDomain): boolean {
    return this.name === other.name;
  }

  toString(): string {
    return this.name;
  }
}

export class SpiffeId {
  private constructor(
    readonly trustDomain: TrustDomain,
    /** '' for a trust-domain ID, otherwise `/seg/seg`. */
    readonly path: string,
  ) {}

  static parse(input: string, makeError: (reason: string) => Error = (r) => new InvalidSpiffeIdError(input, r)): SpiffeId {
    if (typeof input !== 'string') throw makeError('not a string');
    if (input.length === 0) throw makeError('empty');
    if (Buffer.byteLength(input, 'utf8') > MAX_SPIFFE_ID_BYTES) throw makeError(`longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
    if (!input.startsWith(SCHEME)) {
      const colon = input.indexOf(':');
      if (colon > 0 && input.slice(0, colon).toLowerCase() === 'spiffe') {
        if (input.slice(0, colon) !== 'spiffe') throw makeError('scheme must be lowercase "spiffe"');
        throw makeError('scheme must be followed by //');
      }
      throw makeError('scheme must be "spiffe://"');
    }
    const rest = input.slice(SCHEME.length);
    const slash = rest.indexOf('/');
    const tdName = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    for (const ch of ['?', '#']) {
      if (tdName.includes(ch)) throw makeError(ch === '?' ? 'SPIFFE IDs have no query' : 'SPIFFE IDs have no fragment');
    }
    const tdProblem = trustDomainProblem(tdName);
    if (tdProblem) throw makeError(tdProblem);
    const pProblem = pathProblem(path);
    if (pProblem) throw makeError(pProblem);
    return new SpiffeId(TrustDomain.fromValidated(tdName), path);
  }

  /** @internal both parts already validated */
  static fromParts(td: TrustDomain, path: string): SpiffeId {
    return new SpiffeId(td, path);
  }

  /** True when this ID names a trust domain (no path), as CA certificates carry. */
  get isTrustDomainId(): boolean {
    return this.path === '';
  }

  memberOf(td: TrustDomain): boolean {
    return this.trustDomain.equals(td);
  }

  equals(other: SpiffeId): boolean {
    return this.trustDomain.equals(other.trustDomain) && this.path === other.path;
  }

  toString(): string {
    return SCHEME + this.trustDomain.name + this.path;
  }

  toJSON(): string {
    return this.toString();
  }
}
