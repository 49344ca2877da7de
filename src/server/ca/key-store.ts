/**
 * What the CA needs from where its keys live. `Hsm` of src/hsm satisfies it
 * structurally; unit tests of pure logic may pass an in-memory store.
 */
import type { KeyObject } from 'node:crypto';
import type { Signer, SignatureAlgorithm } from '../../spiffe/signer.js';

export type CaKeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072';

export interface CaKeyHandle {
  readonly label: string;
  readonly id: Buffer;
  readonly type: CaKeyType;
  readonly publicKey: KeyObject;
}

export interface CaKeyStore {
  generateKey(opts: { label: string; id?: Buffer; type: CaKeyType }): Promise<CaKeyHandle>;
  findKey(opts: { label?: string; id?: Buffer }): Promise<CaKeyHandle | undefined>;
  destroyKey(key: CaKeyHandle): Promise<void>;
  signer(key: CaKeyHandle, algorithm?: SignatureAlgorithm): Signer;
  /** Whether these keys can sign right now (logged in, token present, keys there), without signing. Optional. */
  canSign?(keys: readonly CaKeyHandle[]): Promise<boolean>;
}

export function algorithmForKeyType(type: CaKeyType): SignatureAlgorithm {
  switch (type) {
    case 'ec-p256':
      return 'ES256';
    case 'ec-p384':
      return 'ES384';
    case 'rsa-2048':
    case 'rsa-3072':
      return 'RS256';
  }
}
