import { cp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { verify } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm, HsmKeyNotFoundError, HsmTokenNotPresentError, type HsmKey } from '../../src/hsm/index.js';
import { probe, testToken, type TestToken } from './helpers.js';

const ok = (key: HsmKey, data: Buffer, sig: Buffer) => verify('sha256', data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig);

describe('token faults on a real SoftHSM token', () => {
  let t: TestToken;
  let p: ReturnType<typeof probe>;
  let hsm: Hsm;
  let key: HsmKey;

  beforeAll(async () => {
    t = await testToken();
    p = probe(t.tok.module);
    hsm = await Hsm.open(t.config({ sessions: 4, reconnectIntervalMs: 0 }));
    key = await hsm.generateKey({ label: 'fault-ec', type: 'ec-p256' });
  });
  afterAll(async () => {
    await hsm?.close();
    p?.release();
    await t?.tok.destroy();
  });

  it('recovers transparently when every session is closed behind its back (C_CloseAllSessions from another handle)', async () => {
    const signer = hsm.signer(key);
    expect(ok(key, Buffer.from('a'), await signer.sign(Buffer.from('a')))).toBe(true);
    const old = hsm.sessionHandles();
    p.api.C_CloseAllSessions(p.slotOf('keel'));
    for (const h of old) expect(() => p.api.C_GetSessionInfo(h)).toThrow(/CKR_SESSION_HANDLE_INVALID/);
    // Several at once: every pool session is dead and each caller must still succeed.
    const msgs = Array.from({ length: 16 }, (_, i) => Buffer.from(`after close-all ${i}`));
    const sigs = await Promise.all(msgs.map((m) => signer.sign(m)));
    sigs.forEach((s, i) => expect(ok(key, msgs[i]!, s)).toBe(true));
    expect(p.countSessions('keel')).toBe(4);
  });

  it('recovers transparently from a logout by someone else (logs in again, re-finds the key handle)', async () => {
    const signer = hsm.signer(key);
    await signer.sign(Buffer.from('warm'));
    const s = p.api.C_OpenSession(p.slotOf('keel'), pkcs11js.CKF_SERIAL_SESSION);
    p.api.C_Logout(s);
    p.api.C_CloseSession(s);
    const sig = await signer.sign(Buffer.from('after logout'));
    expect(ok(key, Buffer.from('after logout'), sig)).toBe(true);
    expect(p.countSessions('keel')).toBe(4);
  });

  it('a destroyed key is a typed HsmKeyNotFoundError, not a hang or a crash', async () => {
    const doomed = await hsm.generateKey({ label: 'doomed', type: 'ec-p256' });
    const signer = hsm.signer(doomed);
    await signer.sign(Buffer.from('before'));
    await hsm.destroyKey(doomed);
    const err = await signer.sign(Buffer.from('after')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HsmKeyNotFoundError);
    expect((err as HsmKeyNotFoundError).name).toBe('HsmKeyNotFoundError');
  });

  it('token directory removed: typed HsmTokenNotPresentError; restored: signs again without a restart', async () => {
    const signer = hsm.signer(key);
    await signer.sign(Buffer.from('before removal'));
    const backup = join(t.tok.dir, 'backup');
    await cp(t.tok.tokenDir, backup, { recursive: true });
    for (const entry of await readdir(t.tok.tokenDir)) await rm(join(t.tok.tokenDir, entry), { recursive: true, force: true });

    for (let i = 0; i < 3; i++) {
      const err = await signer.sign(Buffer.from('while gone')).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HsmTokenNotPresentError);
      expect((err as HsmTokenNotPresentError).message).toMatch(/token/);
    }
    await expect(hsm.findKey({ label: 'fault-ec' })).rejects.toThrow(HsmTokenNotPresentError);

    await cp(backup, t.tok.tokenDir, { recursive: true });
    const sig = await signer.sign(Buffer.from('after restore'));
    expect(ok(key, Buffer.from('after restore'), sig)).toBe(true);
    const again = await hsm.findKey({ label: 'fault-ec' });
    expect(again?.publicKey.equals(key.publicKey)).toBe(true);
    // Signing concurrently after the module was re-initialised, and no session leaked in the process.
    const sigs = await Promise.all(Array.from({ length: 50 }, (_, i) => signer.sign(Buffer.from(`r${i}`))));
    sigs.forEach((s, i) => expect(ok(key, Buffer.from(`r${i}`), s)).toBe(true));
    expect(p.countSessions('keel')).toBe(4);
  });
});
