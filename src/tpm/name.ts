/** Object names (TPM 2.0 Part 1 §16): nameAlg || H_nameAlg(TPMT_PUBLIC). */
import { createHash } from 'node:crypto';
import { TPM_ALG, digestSize, isHashAlg, nodeHashName } from './constants.js';
import { TpmUnsupportedError } from './errors.js';
import { marshalTpmtPublic, type TpmtPublic } from './public.js';

/** The name of an object from its public area. */
export function objectName(pub: TpmtPublic): Buffer {
  if (pub.nameAlg === TPM_ALG.NULL) throw new TpmUnsupportedError('object name with nameAlg TPM_ALG_NULL');
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(pub.nameAlg);
  const digest = createHash(nodeHashName(pub.nameAlg)).update(marshalTpmtPublic(pub)).digest();
  return Buffer.concat([alg, digest]);
}

/** Whether `name` has the shape of a digest name: a known nameAlg then a digest of its size. */
export function isDigestName(name: Uint8Array): boolean {
  if (name.length < 2) return false;
  const alg = (name[0]! << 8) | name[1]!;
  return isHashAlg(alg) && name.length === 2 + digestSize(alg);
}

/** The nameAlg of a digest name. */
export function nameAlgOf(name: Uint8Array): number {
  if (!isDigestName(name)) throw new TpmUnsupportedError(`name of ${name.length} bytes (not nameAlg || digest)`);
  return (name[0]! << 8) | name[1]!;
}

