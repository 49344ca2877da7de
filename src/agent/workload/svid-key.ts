/**
 * The key type of the workload SVIDs this agent requests (agent config
 * `workload_api.svid_key_type`). The agent makes one key per entry and
 * renewal; the server's CSR parser accepts EC P-256, EC P-384 and RSA of
 * 2048 bits or more. RSA-2048 is for workloads that cannot use EC; making the
 * key takes ~50-100 ms of CPU, against well under 1 ms for EC.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';

export const SVID_KEY_TYPES = ['ec-p256', 'ec-p384', 'rsa-2048'] as const;
export type SvidKeyType = (typeof SVID_KEY_TYPES)[number];

export function svidKeyGenerator(type: SvidKeyType): () => KeyObject {
  switch (type) {
    case 'ec-p256':
      return () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    case 'ec-p384':
      return () => generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
    case 'rsa-2048':
      return () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  }
}
