import type { KeyObject } from 'node:crypto';

/** JWS algorithm names; X.509 signatures use the same hash and scheme. */
export type SignatureAlgorithm = 'ES256' | 'ES384' | 'RS256' | 'RS384' | 'PS256' | 'PS384';

/**
 * Something that signs with a key it never hands out: an HSM key in
 * production, an in-memory key in unit tests. X.509 and JWT code depend on
 * this interface only.
 */
export interface Signer {
  readonly algorithm: SignatureAlgorithm;
  /** The public half, read back from wherever the private key lives. */
  readonly publicKey: KeyObject;
  /** Stable identifier of the key (JWT `kid`, journal entries). */
  readonly keyId: string;
  /**
   * Signs `data` (the signer hashes it). ECDSA signatures come back as
   * IEEE P1363 r||s (the JWS form); RSA as the raw signature bytes.
   */
  sign(data: Uint8Array): Promise<Buffer>;
}
