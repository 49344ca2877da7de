// The agent key in the TPM: made under the EK with the attributes that keep
// it there, certified by the AK over a nonce (verified by keel's verifier and
// cross-checked by tpm2_print), and signing digests that node:crypto verifies.
import { createHash, randomBytes, verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice } from '../../src/tpm/device.js';
import { TpmObjectError, TpmStaleHandleError } from '../../src/tpm/tpm-error.js';
import {
  CertifyVerificationError,
  checkAgentKeyPublic,
  ecdsaSignatureDer,
  parseTpmtSignature,
  publicKeyFromTpmtPublic,
  parseTpmtPublic,
  verifyCertify,
  verifyTpmSignature,
} from '../../src/tpm/index.js';
import { sha256Name, tempDir, tpm2, tpm2bPublic } from './helpers.js';

let sim: Swtpm;
let dev: TpmDevice;
let t: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  sim = await startSwtpm();
  dev = await TpmDevice.open(sim.tcti);
  t = await tempDir();
});
afterAll(async () => {
  await dev?.close();
  await sim?.stop();
  await t?.remove();
});

describe('agent key', () => {
  it('is an unrestricted, fixedTPM, fixedParent ECDSA P-256 signing key, as tpm2_print reads it', async () => {
    const blobs = await dev.createAgentKey('rsa-2048');
    expect(() => checkAgentKeyPublic(blobs.public)).not.toThrow();
    const file = await t.file('agent-key.pub', tpm2bPublic(blobs.public));
    const { stdout } = await tpm2(sim, 'tpm2_print', ['-t', 'TPM2B_PUBLIC', file]);
    expect(stdout).toMatch(/fixedtpm\|fixedparent\|sensitivedataorigin\|userwithauth\|noda\|sign/);
    expect(stdout).not.toMatch(/restricted/);
    expect(stdout).toMatch(/curve-id:\s+value: NIST p256/);
  });

  it('signs digests that node:crypto verifies with the public key; the DER form verifies too', async () => {
    const blobs = await dev.createAgentKey('rsa-2048');
    const key = await dev.loadAgentKey('rsa-2048', blobs);
    try {
      expect(key.name.equals(sha256Name(blobs.public))).toBe(true);
      const pub = publicKeyFromTpmtPublic(parseTpmtPublic(blobs.public));
      const message = randomBytes(100);
      const sig = parseTpmtSignature(await dev.sign(key, createHash('sha256').update(message).digest()));
      expect(verifyTpmSignature(pub, message, sig)).toBe(true);
      expect(verify('sha256', message, pub, ecdsaSignatureDer(sig))).toBe(true);
      expect(verify('sha256', randomBytes(100), pub, ecdsaSignatureDer(sig))).toBe(false);
    } finally {
      await dev.flush(key);
    }
  });

  it('is certified by the AK over the nonce; another nonce, another key or another AK is refused', async () => {
    const akBlobs = await dev.createAk('rsa-2048', 'ecc-p256');
    const ak = await dev.loadAk('rsa-2048', akBlobs);
    const blobs = await dev.createAgentKey('rsa-2048');
    const other = await dev.createAgentKey('rsa-2048');
    // Made before the others are loaded: swtpm has three object slots and TPM2_Create needs one.
    const otherAk = await dev.createAk('rsa-2048', 'ecc-p256');
    const key = await dev.loadAgentKey('rsa-2048', blobs);
    try {
      const nonce = randomBytes(32);
      const c = await dev.certify(key, ak, nonce);
      const ok = verifyCertify({ akPublic: akBlobs.public, attest: c.attest, signature: c.signature, nonce, objectPublic: blobs.public });
      expect(ok.attested.name.equals(key.name)).toBe(true);
      const refuse = (o: Partial<Parameters<typeof verifyCertify>[0]>, reason: string): void => {
        try {
          verifyCertify({ akPublic: akBlobs.public, attest: c.attest, signature: c.signature, nonce, objectPublic: blobs.public, ...o });
          expect.unreachable('accepted');
        } catch (e) {
          expect(e).toBeInstanceOf(CertifyVerificationError);
          expect((e as CertifyVerificationError).reason).toBe(reason);
        }
      };
      refuse({ nonce: randomBytes(32) }, 'nonce');
      refuse({ objectPublic: other.public }, 'name');
      refuse({ akPublic: otherAk.public }, 'signature');
      const tampered = Buffer.from(c.attest);
      tampered[tampered.length - 1]! ^= 1;
      refuse({ attest: tampered }, 'signature');
    } finally {
      await dev.flush(key);
      await dev.flush(ak);
    }
  });

  it('persists and is found again at its handle; an AK there is not an agent key; nothing stays loaded', async () => {
    const handle = 0x81018101;
    const blobs = await dev.createAgentKey('rsa-2048');
    const key = await dev.loadAgentKey('rsa-2048', blobs);
    await dev.persistAk(key, handle);
    await dev.flush(key);
    const again = await dev.agentKeyFromPersistent(handle);
    expect(again.public.equals(blobs.public)).toBe(true);
    expect(again.persistentHandle).toBe(handle);
    await dev.flush(again);
    await expect(dev.akFromPersistent(handle)).rejects.toBeInstanceOf(TpmObjectError);
    await dev.evictPersistent(handle);
    await expect(dev.agentKeyFromPersistent(handle)).rejects.toBeInstanceOf(TpmObjectError);

    const akBlobs = await dev.createAk('rsa-2048', 'ecc-p256');
    await expect(dev.loadAgentKey('rsa-2048', akBlobs)).rejects.toBeInstanceOf(TpmObjectError);
    await expect(dev.loadAk('rsa-2048', blobs)).rejects.toBeInstanceOf(TpmObjectError);
    expect((await dev.loadedHandles()).transient).toEqual([]);
  });

  it('a handle of an AK cannot sign as an agent key, and a flushed key is stale', async () => {
    const key = await dev.loadAgentKey('rsa-2048', await dev.createAgentKey('rsa-2048'));
    await dev.flush(key);
    await expect(dev.sign(key, Buffer.alloc(32))).rejects.toBeInstanceOf(TpmStaleHandleError);
  });
});
