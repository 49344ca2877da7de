// AKs survive a TPM reset (swtpm restart): by saved blobs loaded under the
// EK again, or persisted with EvictControl. Quotes after the reset verify
// with tpm2_checkquote.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice, type AkBlobs } from '../../src/tpm/device.js';
import { TpmError, TpmObjectError, TpmStaleHandleError } from '../../src/tpm/tpm-error.js';
import { checkquote, tempDir } from './helpers.js';

let sim: Swtpm;
let t: Awaited<ReturnType<typeof tempDir>>;
const PCRS = [0, 1, 2, 3];
const AK_HANDLE = 0x81000123;

beforeAll(async () => {
  sim = await startSwtpm();
  t = await tempDir();
});
afterAll(async () => {
  await sim?.stop();
  await t?.remove();
});

function resetCount(attest: Buffer): number {
  // magic u32, type u16, qualifiedSigner TPM2B, extraData TPM2B, clock u64, resetCount u32
  let o = 6;
  o += 2 + attest.readUInt16BE(o);
  o += 2 + attest.readUInt16BE(o);
  return attest.readUInt32BE(o + 8);
}

describe('AK across a TPM restart', () => {
  it('reloads saved blobs and persists: both quote after the restart', async () => {
    let blobs: AkBlobs;
    let name: Buffer;
    let before: number;
    {
      const dev = await TpmDevice.open(sim.tcti);
      blobs = await dev.createAk('rsa-2048', 'ecc-p256');
      const ak = await dev.loadAk('rsa-2048', blobs);
      name = ak.name;
      await dev.persistAk(ak, AK_HANDLE);
      // persisting at a taken handle is the TPM's NV_DEFINED error
      const err = await dev.persistAk(ak, AK_HANDLE).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TpmError);
      expect((err as TpmError).decoded.name).toBe('TPM_RC_NV_DEFINED');
      before = resetCount((await dev.quote(ak, [{ bank: 'sha256', pcrs: [0] }], Buffer.alloc(4))).attest);
      await dev.close();
    }

    await sim.restart();

    const dev = await TpmDevice.open(sim.tcti);
    try {
      // 1. the saved blobs, loaded under the same EK again
      const loaded = await dev.loadAk('rsa-2048', blobs);
      expect(loaded.name.equals(name)).toBe(true);
      const nonce = randomBytes(20);
      const q1 = await dev.quote(loaded, [{ bank: 'sha256', pcrs: PCRS }], nonce);
      expect(resetCount(q1.attest)).toBeGreaterThan(before);
      expect(await checkquote(sim, t, { akPublic: blobs.public, ...q1, nonce, pcrs: PCRS }, 'blobs')).toBe(0);
      await dev.flush(loaded);

      // 2. the persistent AK
      const persisted = await dev.akFromPersistent(AK_HANDLE);
      expect(persisted.name.equals(name)).toBe(true);
      expect(persisted.public.equals(blobs.public)).toBe(true);
      expect(persisted.persistentHandle).toBe(AK_HANDLE);
      const q2 = await dev.quote(persisted, [{ bank: 'sha256', pcrs: PCRS }], nonce);
      expect(await checkquote(sim, t, { akPublic: persisted.public, ...q2, nonce, pcrs: PCRS }, 'persisted')).toBe(0);

      // evicting it makes references stale and the handle empty
      await dev.evictPersistent(AK_HANDLE);
      await expect(dev.quote(persisted, [{ bank: 'sha256', pcrs: PCRS }], nonce)).rejects.toBeInstanceOf(TpmStaleHandleError);
      await expect(dev.akFromPersistent(AK_HANDLE)).rejects.toBeInstanceOf(TpmObjectError);
      expect(await dev.loadedHandles()).toEqual({ transient: [], sessions: [] });
    } finally {
      await dev.close();
    }
  });

  it('refuses to treat the EK as an AK, and to evict an EK', async () => {
    const dev = await TpmDevice.open(sim.tcti);
    try {
      const err = await dev.akFromPersistent(0x81010001).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TpmObjectError);
      expect((err as Error).message).toMatch(/not a restricted signing key/);
      await expect(dev.evictPersistent(0x81010001)).rejects.toThrow(/EK/);
    } finally {
      await dev.close();
    }
  });
});
