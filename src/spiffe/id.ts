/**
 * SPIFFE IDs and trust domains exactly as the SPIFFE-ID standard defines them:
 * scheme `spiffe`, a lowercase trust domain of [a-z0-9._-] (at most 255 bytes),
 * path segments of [a-zA-Z0-9._-] with no empty, `.` or `..` segment, no
 * trailing slash, no percent-encoding, query, fragment, userinfo or port.
 */
import { InvalidSpiffeIdError, InvalidTrustDomainError, type SpiffeIdRule } from './errors.js';

/** A broken rule: the human sentence and its code. */
interface Problem {
  readonly reason: string;
  readonly rule: SpiffeIdRule;
}
const problem = (rule: SpiffeIdRule, reason: string): Problem => ({ rule, reason });

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

function trustDomainProblem(name: string): Problem | undefined {
  if (name.length === 0) return problem('td-empty', 'trust domain is empty');
  if (name.length > MAX_TRUST_DOMAIN_BYTES) return problem('td-too-long', `trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);
  // userinfo before port: in `user:pw@host` the ':' belongs to the userinfo.
  if (name.includes('@')) return problem('td-userinfo', 'trust domain has userinfo');
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (!isTdChar(c)) {
      if (c >= 0x41 && c <= 0x5a) return problem('td-uppercase', 'trust domain has an uppercase letter');
      if (c === 0x3a) return problem('td-port', 'trust domain has a port');
      if (c === 0x40) return problem('td-userinfo', 'trust domain has userinfo');
      if (c === 0x25) return problem('percent-encoded', 'trust domain is percent-encoded');
      if (c === 0x3f) return problem('query', 'SPIFFE IDs have no query');
      if (c === 0x23) return problem('fragment', 'SPIFFE IDs have no fragment');
      return problem('td-char', `trust domain has the character ${JSON.stringify(name[i])}, allowed are a-z 0-9 . - _`);
    }
  }
  return undefined;
}

/** Returns why `path` is not a valid SPIFFE ID path ('' is valid: the trust domain ID). */
export function pathProblem(path: string): string | undefined {
  return pathRuleProblem(path)?.reason;
}

function pathRuleProblem(path: string): Problem | undefined {
  if (path === '') return undefined;
  if (path[0] !== '/') return problem('path-no-leading-slash', 'path must start with /');
  let segStart = 1;
  for (let i = 1; i <= path.length; i++) {
    if (i === path.length || path.charCodeAt(i) === 0x2f) {
      const seg = path.slice(segStart, i);
      if (seg.length === 0) {
        return i === path.length
          ? problem('path-trailing-slash', 'path has a trailing /')
          : problem('path-empty-segment', 'path has an empty segment');
      }
      if (seg === '.' || seg === '..') return problem('path-dot-segment', `path has a ${JSON.stringify(seg)} segment`);
      segStart = i + 1;
      continue;
    }
    const c = path.charCodeAt(i);
    if (!isPathChar(c)) {
      if (c === 0x25) return problem('percent-encoded', 'path is percent-encoded');
      if (c === 0x3f) return problem('query', 'SPIFFE IDs have no query');
      if (c === 0x23) return problem('fragment', 'SPIFFE IDs have no fragment');
      return problem('path-char', `path has the character ${JSON.stringify(path[i])}, allowed are a-z A-Z 0-9 . - _`);
    }
  }
  return undefined;
}

export class TrustDomain {
  private constructor(readonly name: string) {}

  /** Accepts a bare name (`example.org`) or a trust-domain ID (`spiffe://example.org`). */
  static parse(input: string): TrustDomain {
    if (typeof input !== 'string') throw new InvalidTrustDomainError(String(input), 'not a string', 'not-a-string');
    if (input.includes(':/')) {
      const id = SpiffeId.parse(input, (reason, rule) => new InvalidTrustDomainError(input, reason, rule));
      if (id.path !== '') throw new InvalidTrustDomainError(input, 'a trust domain ID has no path', 'td-id-has-path');
      return id.trustDomain;
    }
    const p = trustDomainProblem(input);
    if (p) throw new InvalidTrustDomainError(input, p.reason, p.rule);
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
    const p = typeof path === 'string' ? pathRuleProblem(path) : problem('not-a-string', 'path is not a string');
    if (p) throw new InvalidSpiffeIdError(this.idString + String(path), p.reason, p.rule);
    if (Buffer.byteLength(this.idString) + path.length > MAX_SPIFFE_ID_BYTES) {
      throw new InvalidSpiffeIdError(this.idString + path, `longer than ${MAX_SPIFFE_ID_BYTES} bytes`, 'too-long');
    }
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

  static parse(
    input: string,
    makeError: (reason: string, rule: SpiffeIdRule) => Error = (reason, rule) => new InvalidSpiffeIdError(String(input), reason, rule),
  ): SpiffeId {
    if (typeof input !== 'string') throw makeError('not a string', 'not-a-string');
    if (input.length === 0) throw makeError('empty', 'empty');
    // Counted in UTF-8 bytes, as the standard counts; non-ASCII is refused below anyway.
    if (input.length > MAX_SPIFFE_ID_BYTES || Buffer.byteLength(input, 'utf8') > MAX_SPIFFE_ID_BYTES) {
      throw makeError(`longer than ${MAX_SPIFFE_ID_BYTES} bytes`, 'too-long');
    }
    if (!input.startsWith(SCHEME)) {
      const colon = input.indexOf(':');
      if (colon > 0 && input.slice(0, colon).toLowerCase() === 'spiffe') {
        if (input.slice(0, colon) !== 'spiffe') throw makeError('scheme must be lowercase "spiffe"', 'scheme');
        throw makeError('scheme must be followed by //', 'scheme');
      }
      throw makeError('scheme must be "spiffe://"', 'scheme');
    }
    const rest = input.slice(SCHEME.length);
    const slash = rest.indexOf('/');
    const tdName = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    const tdP = trustDomainProblem(tdName);
    if (tdP) throw makeError(tdP.reason, tdP.rule);
    const pathP = pathRuleProblem(path);
    if (pathP) throw makeError(pathP.reason, pathP.rule);
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
