// 1,000 TPM operations in a row on one swtpm (3 object slots, no resource
// manager): quotes, credential activations (which load an EK and a policy
// session), PCR reads, AK loads and flushes, and failing calls among them.
// A single leaked object or session would end in TPM_RC_OBJECT_MEMORY (0x902)
// long before the end.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice, type EkKind } from '../../src/tpm/device.js';
import { TpmError } from '../../src/tpm/tpm-error.js';
import { parseCredentialFile, tempDir, tpm2, tpm2bPublic } from './helpers.js';

let sim: Swtpm;
let t: Awaited<ReturnType<typeof tempDir>>;

beforeAll(async () => {
  sim = await startSwtpm();
  t = await tempDir();
});
afterAll(async () => {
  await sim?.stop();
  await t?.remove();
});

it('runs 1,000 mixed operations without exhausting handles, and leaves nothing loaded', async () => {
  const dev = await TpmDevice.open(sim.tcti);
  const akBlobs = await dev.createAk('rsa-2048', 'ecc-p256');
  const ak = await dev.loadAk('rsa-2048', akBlobs);
  const spareBlobs = await dev.createAk('ecc-p384', 'ecc-p256');

  // one credential per EK kind, for this AK, made offline by tpm2-tools
  const creds = new Map<EkKind, { secret: Buffer; credentialBlob: Buffer; encryptedSecret: Buffer }>();
  for (const ek of ['rsa-2048', 'ecc-p256', 'ecc-p384'] as const) {
    const secret = randomBytes(32);
    const ekFile = await t.file(`${ek}.pub`, tpm2bPublic(await dev.ekPublic(ek)));
    const out = await t.file(`${ek}.cred`);
    await tpm2(undefined, 'tpm2_makecredential', [
      '-T', 'none', '-u', ekFile, '-s', await t.file(`${ek}.secret`, secret), '-n', ak.name.toString('hex'), '-o', out,
    ]);
    creds.set(ek, { secret, ...parseCredentialFile(await readFile(out)) });
  }
  const ekKinds: EkKind[] = ['rsa-2048', 'ecc-p256', 'ecc-p384'];
  const counts = { quote: 0, activate: 0, pcrRead: 0, loadFlush: 0, failed: 0 };

  for (let i = 0; i < 1000; i++) {
    switch (i % 5) {
      case 0: {
        const q = await dev.quote(ak, [{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }], randomBytes(32));
        expect(q.signature.length).toBeGreaterThan(0);
        counts.quote++;
        break;
      }
      case 1: {
        const ek = ekKinds[i % 3]!;
        const c = creds.get(ek)!;
        expect((await dev.activateCredential(ak, ek, c.credentialBlob, c.encryptedSecret)).equals(c.secret)).toBe(true);
        counts.activate++;
        break;
      }
      case 2: {
        const v = await dev.pcrRead([{ bank: 'sha256', pcrs: [...Array(24).keys()] }, { bank: 'sha1', pcrs: [0, 1, 2] }]);
        expect(v.get('sha256')?.size).toBe(24);
        counts.pcrRead++;
        break;
      }
      case 3: {
        const spare = await dev.loadAk('ecc-p384', spareBlobs);
        await dev.quote(spare, [{ bank: 'sha1', pcrs: [0] }], Buffer.alloc(0));
        await dev.flush(spare);
        counts.loadFlush++;
        break;
      }
      case 4: {
        // failures on the way must not leak either: a credential for another EK
        const c = creds.get('rsa-2048')!;
        const err = await dev.activateCredential(ak, 'ecc-p256', c.credentialBlob, c.encryptedSecret).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(TpmError);
        counts.failed++;
        break;
      }
    }
  }
  expect(counts).toEqual({ quote: 200, activate: 200, pcrRead: 200, loadFlush: 200, failed: 200 });

  const loaded = await dev.loadedHandles();
  expect(loaded.sessions).toEqual([]);
  expect(loaded.transient).toHaveLength(1); // the AK this test still holds
  await dev.close(); // flushes it

  // an independent look at the TPM after close
  const transient = await tpm2(sim, 'tpm2_getcap', ['handles-transient']);
  const sessions = await tpm2(sim, 'tpm2_getcap', ['handles-loaded-session']);
  expect(transient.stdout.trim()).toBe('');
  expect(sessions.stdout.trim()).toBe('');
}, 240_000);
