// getRandom, PCR read/extend, typed errors and the worker-thread contract of
// TpmDevice, against a real swtpm, cross-checked with tpm2-tools.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { freePortPair } from '../../simulator/ports.js';
import { TpmDevice } from '../../src/tpm/device.js';
import {
  TpmArgumentError,
  TpmConnectionError,
  TpmDeviceClosedError,
  TpmDeviceError,
  TpmError,
  TpmStaleHandleError,
} from '../../src/tpm/tpm-error.js';
import { tempDir, tpm2 } from './helpers.js';

let sim: Swtpm;
let dev: TpmDevice;

beforeAll(async () => {
  sim = await startSwtpm();
  dev = await TpmDevice.open(sim.tcti);
});
afterAll(async () => {
  await dev?.close();
  await sim?.stop();
});

describe('getRandom', () => {
  it('returns exactly the bytes asked for, beyond one TPM2_GetRandom (32-48 bytes)', async () => {
    for (const n of [0, 1, 32, 33, 48, 49, 1000]) {
      const b = await dev.getRandom(n);
      expect(b.length).toBe(n);
    }
    const a = await dev.getRandom(64);
    const b = await dev.getRandom(64);
    expect(a.equals(b)).toBe(false);
    // 1000 random bytes are not mostly one value
    const big = await dev.getRandom(1000);
    expect(new Set(big).size).toBeGreaterThan(100);
  });

  it('rejects a bad count with TpmArgumentError', async () => {
    await expect(dev.getRandom(-1)).rejects.toBeInstanceOf(TpmArgumentError);
    await expect(dev.getRandom(1.5)).rejects.toBeInstanceOf(TpmArgumentError);
    await expect(dev.getRandom(1 << 20)).rejects.toBeInstanceOf(TpmArgumentError);
  });
});

describe('PCRs', () => {
  it('reads all 24 PCRs of two banks (more than the 8 one PCR_Read returns) as tpm2_pcrread does', async () => {
    // make the values non-trivial first
    await dev.pcrExtend(3, {
      sha1: createHash('sha1').update('x').digest(),
      sha256: createHash('sha256').update('x').digest(),
    });
    const all = [...Array(24).keys()];
    const values = await dev.pcrRead([{ bank: 'sha256', pcrs: all }, { bank: 'sha1', pcrs: all }]);
    expect(values.get('sha256')?.size).toBe(24);
    expect(values.get('sha1')?.size).toBe(24);

    const t = await tempDir();
    try {
      const out = await t.file('pcrs.bin');
      await tpm2(sim, 'tpm2_pcrread', [`sha256:${all.join(',')}+sha1:${all.join(',')}`, '-o', out]);
      const raw = await readFile(out);
      // tpm2_pcrread -o writes the digests concatenated in selection order: sha256 then sha1
      const expected = Buffer.concat([
        ...all.map((i) => values.get('sha256')!.get(i)!),
        ...all.map((i) => values.get('sha1')!.get(i)!),
      ]);
      expect(raw.equals(expected)).toBe(true);
    } finally {
      await t.remove();
    }
  });

  it('extends a PCR: new = H(old || digest), in every bank given', async () => {
    const before = await dev.pcrRead([{ bank: 'sha256', pcrs: [16] }, { bank: 'sha1', pcrs: [16] }]);
    const d256 = createHash('sha256').update('event').digest();
    const d1 = createHash('sha1').update('event').digest();
    await dev.pcrExtend(16, { sha256: d256, sha1: d1 });
    const after = await dev.pcrRead([{ bank: 'sha256', pcrs: [16] }, { bank: 'sha1', pcrs: [16] }]);
    const old256 = before.get('sha256')!.get(16)!;
    const old1 = before.get('sha1')!.get(16)!;
    expect(after.get('sha256')!.get(16)).toEqual(createHash('sha256').update(old256).update(d256).digest());
    expect(after.get('sha1')!.get(16)).toEqual(createHash('sha1').update(old1).update(d1).digest());
  });

  it('an extend is seen by tpm2_pcrread (same TPM, independent client)', async () => {
    const d = createHash('sha256').update('seen-by-tools').digest();
    await dev.pcrExtend(10, { sha256: d });
    const mine = (await dev.pcrRead([{ bank: 'sha256', pcrs: [10] }])).get('sha256')!.get(10)!;
    const { stdout } = await tpm2(sim, 'tpm2_pcrread', ['sha256:10']);
    expect(stdout.toLowerCase()).toContain(mine.toString('hex'));
  });

  it('a bank the TPM has not allocated is a typed error naming the bank', async () => {
    const err = await dev.pcrRead([{ bank: 'sha384', pcrs: [0] }]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TpmArgumentError);
    expect((err as Error).message).toContain('sha384');
  });

  it('rejects bad selections and digests before talking to the TPM', async () => {
    await expect(dev.pcrRead([])).rejects.toBeInstanceOf(TpmArgumentError);
    await expect(dev.pcrRead([{ bank: 'sha256', pcrs: [24] }])).rejects.toThrow(/24/);
    await expect(dev.pcrRead([{ bank: 'md5' as 'sha1', pcrs: [0] }])).rejects.toThrow(/md5/);
    await expect(dev.pcrExtend(0, { sha256: Buffer.alloc(20) })).rejects.toThrow(/32 bytes/);
    await expect(dev.pcrExtend(0, {})).rejects.toBeInstanceOf(TpmArgumentError);
    await expect(dev.pcrExtend(30, { sha1: Buffer.alloc(20) })).rejects.toBeInstanceOf(TpmArgumentError);
  });
});

describe('off the main thread, one call at a time', () => {
  it('keeps the event loop turning while the TPM works', async () => {
    let ticks = 0;
    let done = false;
    const spin = (): void => {
      if (done) return;
      ticks++;
      setImmediate(spin);
    };
    setImmediate(spin);
    // RSA key creation takes tens of milliseconds even on swtpm
    await dev.createAk('rsa-2048', 'rsa-2048');
    done = true;
    expect(ticks).toBeGreaterThan(10);
  });

  it('serializes concurrent calls on one device and answers each one', async () => {
    const jobs = Array.from({ length: 60 }, (_, i) =>
      i % 2 === 0 ? dev.getRandom(40 + i) : dev.pcrRead([{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }]),
    );
    const results = await Promise.all(jobs);
    results.forEach((r, i) => {
      if (i % 2 === 0) expect((r as Buffer).length).toBe(40 + i);
      else expect((r as Map<string, Map<number, Buffer>>).get('sha256')?.size).toBe(10);
    });
  });
});

describe('typed errors', () => {
  it('nothing listening at the TCTI: TpmConnectionError naming the TCTI', async () => {
    const port = await freePortPair();
    const tcti = `swtpm:host=127.0.0.1,port=${port}`;
    const err = await TpmDevice.open(tcti).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TpmConnectionError);
    expect(err).toBeInstanceOf(TpmDeviceError);
    expect((err as TpmConnectionError).name).toBe('TpmConnectionError');
    expect((err as TpmConnectionError).tcti).toBe(tcti);
    expect((err as Error).message).toContain(tcti);
  });

  it('an unknown TCTI module: TpmConnectionError', async () => {
    await expect(TpmDevice.open('no-such-tcti-module:x')).rejects.toBeInstanceOf(TpmConnectionError);
    await expect(TpmDevice.open('')).rejects.toBeInstanceOf(TpmArgumentError);
  });

  it('a TPM error carries rc, command and decoded text', async () => {
    // An AK private blob with a broken integrity HMAC: only the TPM can tell.
    const ak = await dev.createAk('ecc-p384', 'ecc-p256');
    const bad = Buffer.from(ak.private);
    bad[bad.length - 1]! ^= 0xff; // break the integrity HMAC
    const err = await dev.loadAk('ecc-p384', { public: ak.public, private: bad }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TpmError);
    const te = err as TpmError;
    expect(te.name).toBe('TpmError');
    expect(te.command).toBe('TPM2_Load');
    expect(te.rc).toBeGreaterThan(0);
    expect(te.rcText.length).toBeGreaterThan(0);
    expect(te.decoded.layer).toBe('tpm');
    expect(te.message).toContain('TPM2_Load');
    expect(await dev.loadedHandles()).toEqual({ transient: [], sessions: [] });
  });

  it('an AK handle of another device is a TpmStaleHandleError', async () => {
    const other = await TpmDevice.open(sim.tcti);
    try {
      const blobs = await other.createAk('rsa-2048', 'ecc-p256');
      const ak = await other.loadAk('rsa-2048', blobs);
      await expect(dev.quote(ak, [{ bank: 'sha256', pcrs: [0] }], Buffer.alloc(8))).rejects.toBeInstanceOf(TpmStaleHandleError);
      await other.flush(ak);
    } finally {
      await other.close();
    }
  });

  it('a closed device refuses every call with TpmDeviceClosedError; close is idempotent', async () => {
    const d = await TpmDevice.open(sim.tcti);
    const blobs = await d.createAk('rsa-2048', 'ecc-p256');
    const ak = await d.loadAk('rsa-2048', blobs);
    await d.close();
    await d.close();
    expect(d.closed).toBe(true);
    await expect(d.getRandom(1)).rejects.toBeInstanceOf(TpmDeviceClosedError);
    await expect(d.quote(ak, [{ bank: 'sha256', pcrs: [0] }], Buffer.alloc(8))).rejects.toBeInstanceOf(TpmDeviceClosedError);
    // and close() flushed the AK it had loaded
    expect((await dev.loadedHandles()).transient).toEqual([]);
  });
});
