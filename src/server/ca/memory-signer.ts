/**
 * A Signer over a private key held in this process. For an upstream CA key
 * read from a PEM file in tests and demos; production keys stay in the HSM.
 */
import { createHash, createPublicKey, createPrivateKey, sign, constants, type KeyObject } from 'node:crypto';
import type { Signer, SignatureAlgorithm } from '../../spiffe/signer.js';
import { defaultAlgorithmFor } from './algorithms.js';

const HASH: Record<SignatureAlgorithm, string> = { ES256: 'sha256', ES384: 'sha384', RS256: 'sha256', RS384: 'sha384', PS256: 'sha256', PS384: 'sha384' };

export function signerFromPrivateKey(key: KeyObject | string | Buffer, algorithm?: SignatureAlgorithm): Signer {
  const priv = typeof key === 'object' && 'asymmetricKeyType' in key ? key : createPrivateKey(key as string | Buffer);
  if (priv.type !== 'private') throw new TypeError('signerFromPrivateKey needs a private key');
  const publicKey = createPublicKey(priv);
  const alg = algorithm ?? defaultAlgorithmFor(publicKey);
  const hash = HASH[alg];
  const keyId = createHash('sha256').update(publicKey.export({ format: 'der', type: 'spki' })).digest('hex').slice(0, 32);
  const opts =
    alg.startsWith('ES')
      ? { key: priv, dsaEncoding: 'ieee-p1363' as const }
      : alg.startsWith('PS')
        ? { key: priv, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: alg === 'PS256' ? 32 : 48 }
        : { key: priv };
  return {
    algorithm: alg,
    publicKey,
    keyId,
    async sign(data: Uint8Array): Promise<Buffer> {
      return sign(hash, data, opts);
    },
  };
}
