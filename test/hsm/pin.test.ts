import { inspect } from 'node:util';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm, HsmConfigError, HsmPinIncorrectError, PinSourceError } from '../../src/hsm/index.js';
import { probe, testToken, type TestToken } from './helpers.js';

describe('PIN handling on a real SoftHSM token', () => {
  let t: TestToken;
  let dir: string;
  let p: ReturnType<typeof probe>;

  beforeAll(async () => {
    t = await testToken();
    dir = await mkdtemp(join(tmpdir(), 'keel-pin-'));
    p = probe(t.tok.module);
  });
  afterAll(async () => {
    p?.release();
    await t?.tok.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('a wrong PIN is a typed HsmPinIncorrectError whose message, stack and inspection never contain the PIN; nothing stays open', async () => {
    const wrong = `wrong-${t.tok.pin}-pin`;
    process.env.KEEL_WRONG_PIN = wrong;
    const before = p.countSessions('keel');
    const err = await Hsm.open({ module: t.tok.module, token: { label: 'keel' }, pin: { env: 'KEEL_WRONG_PIN' } }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HsmPinIncorrectError);
    const e = err as HsmPinIncorrectError;
    expect(e.code).toBe('CKR_PIN_INCORRECT');
    expect(e.name).toBe('HsmPinIncorrectError');
    for (const text of [e.message, String(e.stack), inspect(e, { depth: 10 }), JSON.stringify(e)]) {
      expect(text).not.toContain(wrong);
      expect(text).not.toContain(t.tok.pin);
    }
    expect(p.countSessions('keel')).toBe(before);
  });

  it('reads the PIN from a file with its trailing newline stripped, and signs', async () => {
    const file = join(dir, 'pin');
    await writeFile(file, `${t.tok.pin}\n`, { mode: 0o600 });
    const hsm = await Hsm.open({ module: t.tok.module, token: { label: 'keel' }, pin: { file } });
    try {
      const key = await hsm.generateKey({ label: 'pin-file', type: 'ec-p384' });
      const sig = await hsm.signer(key).sign(Buffer.from('m'));
      expect(verify('sha384', Buffer.from('m'), { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
      expect(inspect(hsm, { depth: 10, showHidden: true })).not.toContain(t.tok.pin);
    } finally {
      await hsm.close();
    }
  });

  it('missing PIN sources and bad configuration are typed errors naming the source, not its content', async () => {
    await expect(Hsm.open({ module: t.tok.module, token: { label: 'keel' }, pin: { env: 'KEEL_NO_SUCH_VAR' } })).rejects.toThrow(PinSourceError);
    const missing = Hsm.open({ module: t.tok.module, token: { label: 'keel' }, pin: { file: join(dir, 'absent') } });
    await expect(missing).rejects.toThrow(/cannot read PIN file .*absent: ENOENT/);
    await writeFile(join(dir, 'empty'), '\n', { mode: 0o600 });
    await expect(Hsm.open({ module: t.tok.module, token: { label: 'keel' }, pin: { file: join(dir, 'empty') } })).rejects.toThrow(PinSourceError);
    await expect(Hsm.open({ module: t.tok.module, token: { label: 'keel' }, pin: { pin: '1234' } as never })).rejects.toThrow(HsmConfigError);
    await expect(Hsm.open({ ...t.config(), sessions: 0 })).rejects.toThrow(/sessions/);
    await expect(Hsm.open(t.config({ token: { label: 'no-such-token' } }))).rejects.toThrow(/no token labelled "no-such-token"/);
    await expect(Hsm.open(t.config({ module: '/nonexistent/libpkcs11.so' }))).rejects.toThrow(HsmConfigError);
  });
});
