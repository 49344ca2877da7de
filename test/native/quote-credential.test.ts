// AK creation, quotes verified by tpm2_checkquote, and credential activation
// of credentials made offline by tpm2_makecredential — independent
// implementations on both sides of the addon.
import { createHash, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice, type AkKind, type EkKind } from '../../src/tpm/device.js';
import { TpmArgumentError, TpmError, TpmStaleHandleError } from '../../src/tpm/tpm-error.js';
import { checkquote, parseCredentialFile, readTpmtPublic, sha256Name, tempDir, tpm2, tpm2bPublic } from './helpers.js';

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

// tpm2_checkquote 5.4 fails ("Failed to hash PCR values") on a values file
// of 8 or more PCRs, so the cross-checked quotes select 7, across two bitmap
// bytes; the 8+ case is checked against node:crypto below.
const PCRS = [0, 1, 2, 3, 7, 10, 16];

function check(akPublic: Buffer, attest: Buffer, signature: Buffer, nonce: Buffer, tag: string): Promise<number> {
  return checkquote(sim, t, { akPublic, attest, signature, nonce, pcrs: PCRS }, tag);
}

describe.each([
  ['rsa-2048', 'ecc-p256'],
  ['ecc-p384', 'rsa-2048'],
  ['ecc-p256', 'ecc-p256'],
] as [EkKind, AkKind][])('EK %s, AK %s', (ekKind, akKind) => {
  it('creates an AK with the attributes of an AK and the name the TPM reports', async () => {
    const blobs = await dev.createAk(ekKind, akKind);
    const pub = readTpmtPublic(blobs.public);
    // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|sign
    expect(pub.attributes).toBe(0x00050472);
    expect(pub.type).toBe(akKind === 'rsa-2048' ? 0x0001 : 0x0023);
    const ak = await dev.loadAk(ekKind, blobs);
    expect(ak.name.equals(sha256Name(blobs.public))).toBe(true);
    await dev.flush(ak);
  });

  it('quotes PCRs with a nonce; tpm2_checkquote accepts it, and rejects it with another nonce', async () => {
    const blobs = await dev.createAk(ekKind, akKind);
    const ak = await dev.loadAk(ekKind, blobs);
    try {
      const nonce = randomBytes(32);
      const q = await dev.quote(ak, [{ bank: 'sha256', pcrs: PCRS }], nonce);
      expect(q.attest.readUInt32BE(0)).toBe(0xff544347); // TPM_GENERATED_VALUE
      expect(q.attest.readUInt16BE(4)).toBe(0x8018); // TPM_ST_ATTEST_QUOTE
      const tag = `${ekKind}-${akKind}`;
      expect(await check(blobs.public, q.attest, q.signature, nonce, tag)).toBe(0);
      expect(await check(blobs.public, q.attest, q.signature, randomBytes(32), `${tag}-bad`)).not.toBe(0);
      // a signature over something else fails too
      const forged = Buffer.from(q.attest);
      forged[forged.length - 1]! ^= 1;
      expect(await check(blobs.public, forged, q.signature, nonce, `${tag}-forged`)).not.toBe(0);
    } finally {
      await dev.flush(ak);
    }
  });

  it('activates a credential made by tpm2_makecredential for its name; another AK name fails with TpmError', async () => {
    const ekPub = await dev.ekPublic(ekKind);
    const ekFile = await t.file(`${ekKind}.ekpub`, tpm2bPublic(ekPub));
    const blobs = await dev.createAk(ekKind, akKind);
    const ak = await dev.loadAk(ekKind, blobs);
    const other = await dev.createAk(ekKind, akKind);
    try {
      const make = async (name: Buffer, tag: string): Promise<{ secret: Buffer; credentialBlob: Buffer; encryptedSecret: Buffer }> => {
        const secret = randomBytes(32);
        const s = await t.file(`${tag}.secret`, secret);
        const out = await t.file(`${tag}.cred`);
        // tpm2-tools 5.4 takes -n as a hex string (its man page says FILE)
        await tpm2(undefined, 'tpm2_makecredential', ['-T', 'none', '-u', ekFile, '-s', s, '-n', name.toString('hex'), '-o', out]);
        return { secret, ...parseCredentialFile(await readFile(out)) };
      };
      const good = await make(ak.name, `${ekKind}-${akKind}-good`);
      const got = await dev.activateCredential(ak, ekKind, good.credentialBlob, good.encryptedSecret);
      expect(got.equals(good.secret)).toBe(true);

      const wrong = await make(sha256Name(other.public), `${ekKind}-${akKind}-wrong`);
      const err = await dev.activateCredential(ak, ekKind, wrong.credentialBlob, wrong.encryptedSecret).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TpmError);
      expect((err as TpmError).command).toBe('TPM2_ActivateCredential');
      expect((err as TpmError).decoded.format).toBe('format-1');
    } finally {
      await dev.flush(ak);
    }
    expect(await dev.loadedHandles()).toEqual({ transient: [], sessions: [] });
  });
});

describe('AK handles and bad input', () => {
  it('a quote with a flushed AK is a TpmStaleHandleError; flushing twice too', async () => {
    const blobs = await dev.createAk('rsa-2048', 'ecc-p256');
    const ak = await dev.loadAk('rsa-2048', blobs);
    await dev.flush(ak);
    await expect(dev.quote(ak, [{ bank: 'sha256', pcrs: [0] }], Buffer.alloc(16))).rejects.toBeInstanceOf(TpmStaleHandleError);
    await expect(dev.flush(ak)).rejects.toBeInstanceOf(TpmStaleHandleError);
  });

  it('rejects oversize nonces and empty or oversize credential parts before the TPM sees them', async () => {
    const blobs = await dev.createAk('rsa-2048', 'ecc-p256');
    const ak = await dev.loadAk('rsa-2048', blobs);
    try {
      await expect(dev.quote(ak, [{ bank: 'sha256', pcrs: [0] }], Buffer.alloc(65))).rejects.toBeInstanceOf(TpmArgumentError);
      await expect(dev.activateCredential(ak, 'rsa-2048', Buffer.alloc(0), Buffer.alloc(256))).rejects.toBeInstanceOf(TpmArgumentError);
      await expect(dev.activateCredential(ak, 'rsa-2048', Buffer.alloc(131), Buffer.alloc(256))).rejects.toBeInstanceOf(TpmArgumentError);
      await expect(dev.activateCredential(ak, 'rsa-2048', Buffer.alloc(50), Buffer.alloc(600))).rejects.toBeInstanceOf(TpmArgumentError);
    } finally {
      await dev.flush(ak);
    }
  });

  it('the quote digest covers the PCR values in selection order (cross-check with node:crypto)', async () => {
    const blobs = await dev.createAk('rsa-2048', 'ecc-p256');
    const ak = await dev.loadAk('rsa-2048', blobs);
    try {
      await dev.pcrExtend(16, { sha256: createHash('sha256').update('quote-digest').digest() });
      const all = [...Array(24).keys()];
      const sel = [{ bank: 'sha256' as const, pcrs: [...all].reverse() }];
      const q = await dev.quote(ak, sel, Buffer.from('n'));
      const values = (await dev.pcrRead(sel)).get('sha256')!;
      const expected = createHash('sha256').update(Buffer.concat(all.map((i) => values.get(i)!))).digest();
      expect(q.attest.subarray(q.attest.length - 32).equals(expected)).toBe(true);
    } finally {
      await dev.flush(ak);
    }
  });
});
