/**
 * The agent's credential toward its server: the agent SVID chain and a way to
 * sign with the key it certifies. On a node that key is the TPM-resident
 * agent key; the signature proves, per connection, that the caller holds it.
 */
import { createHash, createPublicKey, sign as nodeSign, type KeyObject } from 'node:crypto';
import type { AgentKeyHandle, TpmDevice } from '../../tpm/device.js';
import { ecdsaSignatureDer, parseTpmtPublic, parseTpmtSignature, publicKeyFromTpmtPublic } from '../../tpm/index.js';

export interface AgentCredential {
  /** DER, leaf first. */
  readonly chain: readonly Buffer[];
  /** A DER ECDSA-SHA256 signature over `data` with the key the leaf certifies. */
  sign(data: Buffer): Promise<Buffer>;
}

/** The agent key as the CSR and the channel binding use it: its public key and a signer that runs in the TPM. */
export interface AgentKey {
  readonly publicKey: KeyObject;
  /** DER ECDSA-SHA256 over `data`: hashed here, signed by the TPM. */
  sign(data: Buffer): Promise<Buffer>;
}

export function tpmAgentKey(device: TpmDevice, key: AgentKeyHandle): AgentKey {
  return {
    publicKey: publicKeyFromTpmtPublic(parseTpmtPublic(key.public)),
    async sign(data) {
      const digest = createHash('sha256').update(data).digest();
      return ecdsaSignatureDer(parseTpmtSignature(await device.sign(key, digest)));
    },
  };
}

/** A key in process memory (tests, and what the server refuses to certify: shown for contrast). */
export function softwareAgentKey(privateKey: KeyObject): AgentKey {
  return { publicKey: createPublicKey(privateKey), sign: async (data) => nodeSign('sha256', data, privateKey) };
}

export function credentialOf(chain: readonly Buffer[], key: Pick<AgentKey, 'sign'>): AgentCredential {
  return { chain, sign: (d) => key.sign(d) };
}
