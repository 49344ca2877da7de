/** A SPIFFE ID or trust domain that breaks the SPIFFE-ID standard; `reason` says which rule. */
export class InvalidSpiffeIdError extends Error {
  override readonly name = 'InvalidSpiffeIdError';
  constructor(
    readonly input: string,
    readonly reason: string,
  ) {
    super(`invalid SPIFFE ID ${JSON.stringify(input.length > 120 ? input.slice(0, 120) + '…' : input)}: ${reason}`);
  }
}

export class InvalidTrustDomainError extends Error {
  override readonly name = 'InvalidTrustDomainError';
  constructor(
    readonly input: string,
    readonly reason: string,
  ) {
    super(`invalid trust domain ${JSON.stringify(input.length > 120 ? input.slice(0, 120) + '…' : input)}: ${reason}`);
  }
}
