/**
 * HsmSigner: the `Signer` of src/spiffe/signer.ts over an HSM key (matched
 * structurally; src/hsm does not import src/spiffe). Hashing happens in Node:
 * SoftHSM and many tokens only have raw CKM_ECDSA, and a 32-byte digest is
 * all that needs to cross into the token.
 */
import { createHash, type KeyObject } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import type { HsmAlgorithm } from './config.js';
import { HsmAlgorithmError, Pkcs11Error } from './errors.js';
import type { Hsm, HsmKey } from './hsm.js';
import { DIGEST_INFO_PREFIX, curveOf } from './key-material.js';

export interface SigningPlan {
  readonly hash: 'sha256' | 'sha384';
  readonly mechanism: pkcs11js.Mechanism;
  /** What goes into C_Sign: the digest, DigestInfo || digest, or the whole message for a hashing mechanism. */
  readonly input: 'digest' | 'digest-info' | 'message';
  /** The signature's exact length (r||s for ECDSA, the modulus for RSA): anything else is a token fault. */
  readonly outLength: number;
}

/** How to make `alg` with `key` on a token that has the mechanisms `has` says; undefined if it has none. */
export function signingPlan(key: HsmKey, alg: HsmAlgorithm, has: (m: number) => boolean): SigningPlan | undefined {
  const C = pkcs11js;
  const hash = alg.endsWith('256') ? 'sha256' : 'sha384';
  const curve = curveOf(key.type);
  if (alg === 'ES256' || alg === 'ES384') {
    // JWS binds the curve to the algorithm: ES256 is P-256 only, ES384 P-384 only.
    if (!curve || (alg === 'ES256') !== (curve.type === 'ec-p256')) throw new HsmAlgorithmError(`${alg} does not fit a ${key.type} key`);
    if (!has(C.CKM_ECDSA)) return undefined;
    return { hash, mechanism: { mechanism: C.CKM_ECDSA }, input: 'digest', outLength: 2 * curve.size };
  }
  if (curve) throw new HsmAlgorithmError(`${alg} does not fit a ${key.type} key`);
  const outLength = key.type === 'rsa-2048' ? 256 : 384;
  if (alg === 'RS256' || alg === 'RS384') {
    if (has(C.CKM_RSA_PKCS)) return { hash, mechanism: { mechanism: C.CKM_RSA_PKCS }, input: 'digest-info', outLength };
    const m = hash === 'sha256' ? C.CKM_SHA256_RSA_PKCS : C.CKM_SHA384_RSA_PKCS;
    if (has(m)) return { hash, mechanism: { mechanism: m }, input: 'message', outLength };
    return undefined;
  }
  // PS256/PS384: RFC 7518 §3.5 — MGF1 with the same hash, salt as long as the hash.
  const parameter = {
    type: C.CK_PARAMS_RSA_PSS,
    hashAlg: hash === 'sha256' ? C.CKM_SHA256 : C.CKM_SHA384,
    mgf: hash === 'sha256' ? C.CKG_MGF1_SHA256 : C.CKG_MGF1_SHA384,
    saltLen: hash === 'sha256' ? 32 : 48,
  };
  if (has(C.CKM_RSA_PKCS_PSS)) return { hash, mechanism: { mechanism: C.CKM_RSA_PKCS_PSS, parameter }, input: 'digest', outLength };
  const m = hash === 'sha256' ? C.CKM_SHA256_RSA_PKCS_PSS : C.CKM_SHA384_RSA_PKCS_PSS;
  if (has(m)) return { hash, mechanism: { mechanism: m, parameter }, input: 'message', outLength };
  return undefined;
}

export class HsmSigner {
  readonly publicKey: KeyObject;
  /** Hex of the key's CKA_ID: stable across restarts, and findKey({ id }) finds the key from it. */
  readonly keyId: string;
  private readonly id: Buffer;

  /** @internal obtain one from Hsm.signer() */
  constructor(
    private readonly hsm: Hsm,
    key: HsmKey,
    readonly algorithm: HsmAlgorithm,
    private readonly plan: SigningPlan,
  ) {
    this.publicKey = key.publicKey;
    this.id = Buffer.from(key.id);
    this.keyId = this.id.toString('hex');
  }

  /** Signs `data` (hashed here). ECDSA → P1363 r||s (the JWS form; p1363ToDer for X.509); RSA → the raw signature. */
  async sign(data: Uint8Array): Promise<Buffer> {
    const plan = this.plan;
    let input: Buffer;
    if (plan.input === 'message') input = Buffer.from(data);
    else {
      const digest = createHash(plan.hash).update(data).digest();
      input = plan.input === 'digest' ? digest : Buffer.concat([DIGEST_INFO_PREFIX[plan.hash], digest]);
    }
    const sig = await this.hsm.signRaw(this.id, this.keyId, plan.mechanism, input, plan.outLength);
    if (sig.length !== plan.outLength) {
      throw new Pkcs11Error('CKR_GENERAL_ERROR', 'C_Sign', `token returned a ${sig.length}-byte signature, expected ${plan.outLength}`);
    }
    return sig;
  }
}
