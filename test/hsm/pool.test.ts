import { verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm, HsmBusyError, HsmClosedError, type HsmKey } from '../../src/hsm/index.js';
import { probe, testToken, type TestToken } from './helpers.js';

describe('session pool on a real SoftHSM token', () => {
  let t: TestToken;
  let p: ReturnType<typeof probe>;
  let key: HsmKey;

  beforeAll(async () => {
    t = await testToken();
    p = probe(t.tok.module);
    const hsm = await Hsm.open(t.config());
    key = await hsm.generateKey({ label: 'pool-ec', type: 'ec-p256' });
    await hsm.close();
  });
  afterAll(async () => {
    p?.release();
    await t?.tok.destroy();
  });

  it('2,000 signatures in flight over 4 sessions all verify (SoftHSM crashes here without CKF_OS_LOCKING_OK)', async () => {
    const hsm = await Hsm.open(t.config({ sessions: 4, maxQueue: 2000 }));
    try {
      const signer = hsm.signer(key);
      const msgs = Array.from({ length: 2000 }, (_, i) => Buffer.from(`message ${i}`));
      const sigs = await Promise.all(msgs.map((m) => signer.sign(m)));
      const bad = sigs.filter((s, i) => !verify('sha256', msgs[i]!, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, s));
      expect(bad).toHaveLength(0);
      expect(p.countSessions('keel')).toBe(4);
    } finally {
      await hsm.close();
    }
  });

  it('rejects work beyond the waiting queue with HsmBusyError, and the rest still completes', async () => {
    const hsm = await Hsm.open(t.config({ sessions: 2, maxQueue: 10 }));
    try {
      const signer = hsm.signer(key);
      const results = await Promise.allSettled(Array.from({ length: 20 }, () => signer.sign(Buffer.from('x'))));
      const ok = results.filter((r) => r.status === 'fulfilled');
      const busy = results.filter((r) => r.status === 'rejected' && r.reason instanceof HsmBusyError);
      expect(ok).toHaveLength(12); // 2 in flight + 10 queued
      expect(busy).toHaveLength(8);
      expect((busy[0] as PromiseRejectedResult).reason.name).toBe('HsmBusyError');
    } finally {
      await hsm.close();
    }
  });

  it('close() waits for in-flight signatures, refuses new ones and leaves no session open', async () => {
    const before = p.countSessions('keel');
    const hsm = await Hsm.open(t.config({ sessions: 3 }));
    expect(p.countSessions('keel')).toBe(before + 3);
    const handles = hsm.sessionHandles();
    expect(handles).toHaveLength(3);
    const signer = hsm.signer(key);
    const inflight = Promise.allSettled(Array.from({ length: 10 }, () => signer.sign(Buffer.from('y'))));
    await hsm.close();
    const settled = await inflight;
    // Those already holding a session finished; queued ones were refused.
    for (const r of settled) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(HsmClosedError);
    expect(settled.filter((r) => r.status === 'fulfilled').length).toBeGreaterThanOrEqual(3);
    await expect(signer.sign(Buffer.from('z'))).rejects.toThrow(HsmClosedError);
    for (const h of handles) expect(() => p.api.C_GetSessionInfo(h)).toThrow(/CKR_SESSION_HANDLE_INVALID/);
    expect(p.countSessions('keel')).toBe(before);
  });

  it('two Hsm instances on one token share the login and keep their own sessions', async () => {
    const a = await Hsm.open(t.config({ sessions: 2 }));
    const b = await Hsm.open(t.config({ sessions: 2 }));
    try {
      const ka = await a.findKey({ label: 'pool-ec' });
      const sig = await b.signer((await b.findKey({ label: 'pool-ec' }))!).sign(Buffer.from('shared'));
      expect(verify('sha256', Buffer.from('shared'), { key: ka!.publicKey, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
      await a.close();
      expect(await b.signer(key).sign(Buffer.from('after a closed'))).toHaveLength(64);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
