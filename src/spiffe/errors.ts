function quote(input: string): string {
  return JSON.stringify(input.length > 120 ? input.slice(0, 120) + '…' : input);
}

/** Which SPIFFE-ID rule an input broke (standards/SPIFFE-ID.md §2). */
export type SpiffeIdRule =
  | 'not-a-string'
  | 'empty'
  | 'too-long'
  | 'scheme'
  | 'td-empty'
  | 'td-too-long'
  | 'td-uppercase'
  | 'td-port'
  | 'td-userinfo'
  | 'td-char'
  | 'query'
  | 'fragment'
  | 'percent-encoded'
  | 'path-empty-segment'
  | 'path-trailing-slash'
  | 'path-dot-segment'
  | 'path-char'
  | 'path-no-leading-slash'
  | 'td-id-has-path'
  | 'path-required';

/** A SPIFFE ID or trust domain that breaks the SPIFFE-ID standard; `reason` says which rule, `rule` is its code. */
export class InvalidSpiffeIdError extends Error {
  override readonly name = 'InvalidSpiffeIdError';
  constructor(
    readonly input: string,
    readonly reason: string,
    readonly rule: SpiffeIdRule = 'scheme',
  ) {
    super(`invalid SPIFFE ID ${quote(input)}: ${reason}`);
  }
}

export class InvalidTrustDomainError extends Error {
  override readonly name = 'InvalidTrustDomainError';
  constructor(
    readonly input: string,
    readonly reason: string,
    readonly rule: SpiffeIdRule = 'td-char',
  ) {
    super(`invalid trust domain ${quote(input)}: ${reason}`);
  }
}

/** The X509-SVID rule (standards/X509-SVID.md, RFC 5280 path validation) a chain broke. */
export type X509SvidRule =
  | 'malformed-chain'
  | 'empty-chain'
  | 'no-uri-san'
  | 'multiple-uri-sans'
  | 'invalid-spiffe-id'
  | 'leaf-id-without-path'
  | 'san-not-critical'
  | 'leaf-is-ca'
  | 'leaf-no-key-usage'
  | 'leaf-key-usage-not-critical'
  | 'leaf-no-digital-signature'
  | 'leaf-key-cert-sign'
  | 'leaf-crl-sign'
  | 'leaf-eku-missing-server-auth'
  | 'leaf-eku-missing-client-auth'
  | 'unknown-critical-extension'
  | 'no-bundle-for-trust-domain'
  | 'not-yet-valid'
  | 'expired'
  | 'no-issuer'
  | 'bad-signature'
  | 'issuer-not-ca'
  | 'issuer-no-key-cert-sign'
  | 'issuer-key-usage-not-critical'
  | 'issuer-id-has-path'
  | 'path-length-exceeded'
  | 'name-constraints'
  | 'chain-too-long';

export class X509SvidError extends Error {
  override readonly name = 'X509SvidError';
  constructor(
    readonly rule: X509SvidRule,
    detail: string,
  ) {
    super(`X509-SVID refused (${rule}): ${detail}`);
  }
}

/** Why a JWT-SVID was refused, or could not be minted. */
export type JwtSvidReason =
  | 'malformed'
  | 'not-compact-jws'
  | 'bad-header'
  | 'unsupported-alg'
  | 'bad-typ'
  | 'forbidden-header'
  | 'missing-kid'
  | 'missing-sub'
  | 'invalid-sub'
  | 'missing-aud'
  | 'wrong-aud'
  | 'missing-exp'
  | 'bad-claim'
  | 'expired'
  | 'not-yet-valid'
  | 'no-bundle'
  | 'unknown-kid'
  | 'alg-key-mismatch'
  | 'bad-signature'
  | 'bad-mint-input'
  | 'signer-output';

export class JwtSvidError extends Error {
  override readonly name = 'JwtSvidError';
  constructor(
    readonly reason: JwtSvidReason,
    detail: string,
  ) {
    super(`JWT-SVID refused (${reason}): ${detail}`);
  }
}

/** Why a WIT-SVID (or its cnf key) was refused, or could not be minted. */
export type WitSvidReason =
  | 'malformed'
  | 'not-compact-jws'
  | 'bad-header'
  | 'forbidden-header'
  | 'unsupported-alg'
  | 'bad-typ'
  | 'missing-kid'
  | 'unknown-kid'
  | 'alg-key-mismatch'
  | 'bad-signature'
  | 'no-bundle'
  | 'missing-sub'
  | 'invalid-sub'
  | 'missing-exp'
  | 'expired'
  | 'not-yet-valid'
  | 'bad-claim'
  | 'missing-cnf'
  | 'bad-cnf'
  | 'bad-mint-input'
  | 'signer-output';

/** A WIT-SVID (or its cnf key) refused; `reason` names the rule. */
export class WitSvidError extends Error {
  override readonly name = 'WitSvidError';
  constructor(
    readonly reason: WitSvidReason,
    detail: string,
  ) {
    super(`WIT-SVID refused (${reason}): ${detail}`);
  }
}

/** What was wrong with a SPIFFE bundle, a bundle map or the JSON carrying them. */
export type BundleErrorReason =
  | 'malformed-json'
  | 'duplicate-key'
  | 'not-an-object'
  | 'missing-keys'
  | 'bad-sequence'
  | 'bad-refresh-hint'
  | 'bad-jwk'
  | 'x5c-count'
  | 'bad-certificate'
  | 'x5c-key-mismatch'
  | 'missing-kid'
  | 'duplicate-kid'
  | 'unsupported-key'
  | 'trust-domain'
  | 'duplicate-trust-domain'
  | 'malformed-der';

export class BundleError extends Error {
  override readonly name = 'BundleError';
  constructor(
    readonly reason: BundleErrorReason,
    detail: string,
  ) {
    super(`SPIFFE bundle refused (${reason}): ${detail}`);
  }
}
