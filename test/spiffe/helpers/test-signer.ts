/**
 * An in-memory Signer for unit tests of pure JWT logic (production signers
 * live in the HSM). ECDSA comes out as IEEE P1363 r||s, as the interface says.
 */
import { constants, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import type { SignatureAlgorithm, Signer } from '../../../src/spiffe/index.js';

const HASH = { '256': 'sha256', '384': 'sha384', '512': 'sha512' } as const;

export class TestSigner implements Signer {
  readonly publicKey: KeyObject;
  readonly #privateKey: KeyObject;

  constructor(
    readonly algorithm: SignatureAlgorithm,
    readonly keyId: string,
  ) {
    const pair =
      algorithm === 'ES256'
        ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
        : algorithm === 'ES384'
          ? generateKeyPairSync('ec', { namedCurve: 'P-384' })
          : generateKeyPairSync('rsa', { modulusLength: 2048 });
    this.publicKey = pair.publicKey;
    this.#privateKey = pair.privateKey;
  }

  get privateKey(): KeyObject {
    return this.#privateKey;
  }

  async sign(data: Uint8Array): Promise<Buffer> {
    const hash = HASH[this.algorithm.slice(2) as keyof typeof HASH];
    if (this.algorithm.startsWith('ES')) return sign(hash, data, { key: this.#privateKey, dsaEncoding: 'ieee-p1363' });
    if (this.algorithm.startsWith('PS')) {
      return sign(hash, data, { key: this.#privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST });
    }
    return sign(hash, data, this.#privateKey);
  }
}
