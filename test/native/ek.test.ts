// EKs: the public area the addon returns is the key the EK certificate
// certifies (RSA-2048 and the P-384 high-range EK that swtpm provisions), and
// the ECC P-256 EK, which swtpm does not provision, comes from its template.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { EK_CERT_NV_INDEX, TpmDevice } from '../../src/tpm/device.js';
import { TpmArgumentError } from '../../src/tpm/tpm-error.js';
import { readTpmtPublic, stripDerPadding, tempDir, tpm2, tpm2bPublic } from './helpers.js';

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

async function certOf(nvIndex: number): Promise<X509Certificate> {
  const nv = await dev.readNv(nvIndex);
  expect(nv).toBeInstanceOf(Buffer);
  return new X509Certificate(stripDerPadding(nv!));
}

describe('EK public areas', () => {
  it('RSA-2048 EK: the modulus is the one in the EK certificate at 0x01c00002', async () => {
    const pub = readTpmtPublic(await dev.ekPublic('rsa-2048'));
    expect(pub.type).toBe(0x0001);
    expect(pub.nameAlg).toBe(0x000b);
    expect(pub.attributes).toBe(0x000300b2);
    expect(pub.authPolicy.toString('hex')).toBe('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa');
    const cert = await certOf(EK_CERT_NV_INDEX['rsa-2048']);
    expect(pub.key.export({ format: 'jwk' })).toEqual(cert.publicKey.export({ format: 'jwk' }));
    // and the cert chains to the simulator's manufacturer CA
    const issuer = new X509Certificate(sim.manufacturerCaPems[1]!);
    expect(cert.verify(issuer.publicKey)).toBe(true);
  });

  it('ECC P-384 high-range EK: the point is the one in the EK certificate at 0x01c00016', async () => {
    const pub = readTpmtPublic(await dev.ekPublic('ecc-p384'));
    expect(pub.type).toBe(0x0023);
    expect(pub.curve).toBe(0x0004);
    expect(pub.nameAlg).toBe(0x000c);
    const cert = await certOf(EK_CERT_NV_INDEX['ecc-p384']);
    expect(pub.key.export({ format: 'jwk' })).toEqual(cert.publicKey.export({ format: 'jwk' }));
  });

  it('the persistent EKs are returned byte for byte as tpm2_readpublic reads them', async () => {
    const t = await tempDir();
    try {
      for (const [kind, handle] of [['rsa-2048', '0x81010001'], ['ecc-p384', '0x81010016']] as const) {
        const out = await t.file(`${kind}.pub`);
        await tpm2(sim, 'tpm2_readpublic', ['-c', handle, '-o', out]);
        expect((await readFile(out)).equals(tpm2bPublic(await dev.ekPublic(kind)))).toBe(true);
      }
    } finally {
      await t.remove();
    }
  });

  it('ECC P-256 EK (not provisioned by swtpm) is derived from template L-2, the same key each time, and flushed', async () => {
    const a = await dev.ekPublic('ecc-p256');
    const b = await dev.ekPublic('ecc-p256');
    expect(a.equals(b)).toBe(true);
    const pub = readTpmtPublic(a);
    expect(pub.curve).toBe(0x0003);
    expect(pub.attributes).toBe(0x000300b2);
    expect(pub.key.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    // tpm2_createek derives the same default ECC EK from the same template
    const t = await tempDir();
    try {
      const out = await t.file('ek.pub');
      const ctx = await t.file('ek.ctx');
      await tpm2(sim, 'tpm2_createek', ['-G', 'ecc', '-c', ctx, '-u', out]);
      await tpm2(sim, 'tpm2_flushcontext', ['-t']);
      expect((await readFile(out)).equals(tpm2bPublic(a))).toBe(true);
    } finally {
      await t.remove();
    }
    expect((await dev.loadedHandles()).transient).toEqual([]);
  });

  it('an EK certificate index that is not defined reads as undefined', async () => {
    expect(await dev.readNv(EK_CERT_NV_INDEX['ecc-p256'])).toBeUndefined();
    expect(await dev.ekCertificate('ecc-p256')).toBeUndefined();
    await expect(dev.readNv(0x81010001)).rejects.toBeInstanceOf(TpmArgumentError);
    await expect(dev.ekPublic('dsa' as 'rsa-2048')).rejects.toBeInstanceOf(TpmArgumentError);
  });

  it('reads an NV index larger than one NV_Read (1024 bytes here) whole, like tpm2_nvread', async () => {
    const t = await tempDir();
    try {
      const data = Buffer.alloc(2000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
      const f = await t.file('data.bin', data);
      await tpm2(sim, 'tpm2_nvdefine', ['0x01500001', '-C', 'o', '-s', '2000', '-a', 'ownerread|ownerwrite|authread|authwrite']);
      await tpm2(sim, 'tpm2_nvwrite', ['0x01500001', '-C', 'o', '-i', f]);
      const got = await dev.readNv(0x01500001);
      expect(got?.equals(data)).toBe(true);
      await tpm2(sim, 'tpm2_nvdefine', ['0x01500002', '-C', 'o', '-s', '16', '-a', 'ownerread|ownerwrite']);
      expect(await dev.readNv(0x01500002)).toBeUndefined(); // defined, never written
    } finally {
      await t.remove();
    }
  });
});
