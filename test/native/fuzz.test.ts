// Blobs from disk or from the network reach the addon (saved AK blobs, a
// server's credential): garbage, truncated and oversized input must end in a
// typed error, never a crash, a hang or a leaked handle.
import fc from 'fast-check';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice, type AkBlobs, type AkHandle } from '../../src/tpm/device.js';
import { TpmDeviceError } from '../../src/tpm/tpm-error.js';

let sim: Swtpm;
let dev: TpmDevice;
let good: AkBlobs;
let ak: AkHandle;

beforeAll(async () => {
  sim = await startSwtpm();
  dev = await TpmDevice.open(sim.tcti);
  good = await dev.createAk('rsa-2048', 'ecc-p256');
  ak = await dev.loadAk('rsa-2048', good);
});
afterAll(async () => {
  await dev?.close();
  await sim?.stop();
});

const bytes = (max: number): fc.Arbitrary<Buffer> => fc.uint8Array({ minLength: 0, maxLength: max }).map((u) => Buffer.from(u));

/** A valid blob with a few bytes flipped, cut short, or extended. */
const mutated = (b: Buffer): fc.Arbitrary<Buffer> =>
  fc.oneof(
    fc.array(fc.tuple(fc.nat(b.length - 1), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }).map((flips) => {
      const c = Buffer.from(b);
      for (const [i, x] of flips) c[i] = c[i]! ^ x;
      return c;
    }),
    fc.nat(b.length - 1).map((n) => b.subarray(0, n)),
    bytes(64).map((extra) => Buffer.concat([b, extra, Buffer.alloc(1)])),
  );

async function expectTypedFailureOrSuccess(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TpmDeviceError);
    expect((e as Error).name).toMatch(/^Tpm/);
  }
}

it('loadAk: garbage and mutated blobs fail with typed errors and leak nothing', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        public: fc.oneof(bytes(400), mutated(good.public)),
        private: fc.oneof(bytes(400), mutated(good.private), fc.constant(good.private)),
      }),
      async (blobs) => {
        try {
          const h = await dev.loadAk('rsa-2048', blobs);
          await dev.flush(h); // a mutation the TPM accepts is still cleaned up
        } catch (e) {
          expect(e).toBeInstanceOf(TpmDeviceError);
        }
      },
    ),
    { numRuns: 150 },
  );
  expect((await dev.loadedHandles()).transient).toHaveLength(1); // only `ak`
});

it('activateCredential: garbage credential blobs and secrets fail with typed errors', async () => {
  await fc.assert(
    fc.asyncProperty(bytes(200), bytes(600), fc.constantFrom('rsa-2048', 'ecc-p256', 'ecc-p384' as const), async (blob, secret, ek) => {
      await expectTypedFailureOrSuccess(dev.activateCredential(ak, ek, blob, secret));
    }),
    { numRuns: 150 },
  );
  const loaded = await dev.loadedHandles();
  expect(loaded.sessions).toEqual([]); // every EK policy session was flushed
  expect(loaded.transient).toHaveLength(1); // only `ak`
});

it('quote: any nonce and PCR selection is answered or refused with a typed error', async () => {
  await fc.assert(
    fc.asyncProperty(
      bytes(80),
      fc.array(fc.record({ bank: fc.constantFrom('sha1', 'sha256', 'sha384' as const), pcrs: fc.array(fc.integer({ min: -2, max: 30 }), { maxLength: 30 }) }), { maxLength: 4 }),
      async (nonce, sel) => {
        await expectTypedFailureOrSuccess(dev.quote(ak, sel, nonce));
      },
    ),
    { numRuns: 150 },
  );
});
