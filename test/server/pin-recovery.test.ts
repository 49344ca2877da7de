/**
 * A PIN changed on the token under a running server (issue 15): real SoftHSM,
 * real SQLite, the HTTP API on a real socket. After a forced re-login with
 * the old PIN, signing is refused with a typed error and /ready says 503 (hsm
 * failing); the rejected PIN is not offered again; writing the new PIN to
 * the PIN file brings signing and /ready back without a restart. No PIN ever
 * reaches an error message.
 */
import { inspect } from 'node:util';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { Hsm, HsmPinIncorrectError } from '../../src/hsm/index.js';
import { memoryAuditLog, silentLogger } from '../../src/log/index.js';
import { CertificateAuthority } from '../../src/server/ca/index.js';
import { startHttpApi, type HttpApiHandle } from '../../src/server/http/index.js';
import { StoreCaJournal } from '../../src/server/server.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { probe } from '../hsm/helpers.js';

describe('a changed PIN, recovered without a restart', () => {
  let tok: SoftHsmToken;
  let dir: string;
  let pinFile: string;
  let hsm: Hsm;
  let store: SqliteDatastore;
  let ca: CertificateAuthority;
  let http: HttpApiHandle;
  let p: ReturnType<typeof probe>;
  let logins = 0;
  const pins = { first: '', second: 'second-pin-4711', third: 'third-pin-0815' };

  const ready = async () => {
    const r = await fetch(`http://127.0.0.1:${http.publicAddress!.port}/ready`);
    return { status: r.status, body: (await r.json()) as { checks?: Record<string, string> } };
  };
  /** Someone changes the user PIN on the token and logs the application out (login is per application). */
  const changePin = (from: string, to: string) => {
    const s = p.api.C_OpenSession(p.slotOf('keel-pin'), pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      p.api.C_SetPIN(s, from, to);
      p.api.C_Logout(s);
    } finally {
      p.api.C_CloseSession(s);
    }
  };
  const signJwt = () => ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/w', audience: 'a', ttlSeconds: 60 });
  const noPinIn = (e: unknown) => {
    for (const text of [String((e as Error).message), String((e as Error).stack), inspect(e, { depth: 10 }), JSON.stringify(e)]) {
      for (const pin of Object.values(pins)) expect(text).not.toContain(pin);
    }
  };

  beforeAll(async () => {
    tok = await createSoftHsmToken({ label: 'keel-pin' });
    process.env.SOFTHSM2_CONF = tok.conf;
    pins.first = tok.pin;
    dir = await mkdtemp(join(tmpdir(), 'keel-pin-recovery-'));
    pinFile = join(dir, 'hsm.pin');
    await writeFile(pinFile, `${tok.pin}\n`, { mode: 0o600 });
    hsm = await Hsm.open({ module: tok.module, token: { label: 'keel-pin' }, pin: { file: pinFile }, pinRetryIntervalMs: 0 });
    p = probe(tok.module);
    // Count logins on the module both share, to see that a rejected PIN is not offered again.
    const login = p.api.C_Login.bind(p.api);
    p.api.C_Login = ((...args: Parameters<typeof login>) => (logins++, login(...args))) as typeof p.api.C_Login;
    store = SqliteDatastore.open({ path: join(dir, 'keel.db') });
    ca = await CertificateAuthority.open({
      trustDomain: 'example.org', keys: hsm, journal: new StoreCaJournal(store, 'spiffe://example.org/keel/server'), rotationCheckIntervalMs: 0,
      x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3600 }, jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
    });
    http = await startHttpApi({
      store, bundles: ca, trustDomain: TrustDomain.parse('example.org'), audit: memoryAuditLog(), logger: silentLogger,
      caReady: () => ca.ready(), hsmReady: () => ca.canSign(),
      listen: { public: { host: '127.0.0.1', port: 0, allowPlaintext: true }, adminSocket: join(dir, 'admin.sock') },
    });
  });
  afterAll(async () => {
    await http?.close();
    await ca?.close();
    await store?.close();
    await hsm?.close();
    p?.release();
    await tok?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('refuses to sign and is not ready while the PIN is wrong, and recovers when the PIN file has the new one', async () => {
    await signJwt();
    expect(await ready()).toMatchObject({ status: 200, body: { checks: { store: 'ok', ca: 'ok', hsm: 'ok' } } });

    changePin(pins.first, pins.second);
    const err = await signJwt().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HsmPinIncorrectError);
    expect((err as HsmPinIncorrectError).code).toBe('CKR_PIN_INCORRECT');
    noPinIn(err);
    expect(await ready()).toMatchObject({ status: 503, body: { checks: { store: 'ok', ca: 'ok', hsm: 'failing' } } });

    // The file still holds the rejected PIN: it is re-read on every attempt but never offered again.
    const before = logins;
    for (let i = 0; i < 3; i++) {
      expect(await signJwt().catch((e: unknown) => e)).toBeInstanceOf(HsmPinIncorrectError);
      expect((await ready()).status).toBe(503);
    }
    expect(logins).toBe(before);

    await writeFile(pinFile, `${pins.second}\n`);
    const jwt = await signJwt();
    expect(jwt.token.split('.')).toHaveLength(3);
    expect(await ready()).toMatchObject({ status: 200, body: { checks: { hsm: 'ok' } } });
    expect(hsm.loginRefusal).toBeUndefined();
    expect(logins).toBeGreaterThan(before); // the counter does see logins
  });

  it('a new PIN already in the file when the old one is rejected is used at once', async () => {
    await writeFile(pinFile, `${pins.third}\n`);
    changePin(pins.second, pins.third);
    expect((await signJwt()).token).toBeTruthy();
    expect((await ready()).status).toBe(200);
  });

  it('between re-reads it waits the retry interval: a new PIN is not read before it is up', async () => {
    const slow = await Hsm.open({ module: tok.module, token: { label: 'keel-pin' }, pin: { file: pinFile }, pinRetryIntervalMs: 600_000 });
    try {
      const key = await slow.generateKey({ label: 'slow', type: 'ec-p256' });
      const signer = slow.signer(key);
      await signer.sign(Buffer.from('before'));
      changePin(pins.third, pins.first);
      // Rejected; the immediate re-read finds the same (rejected) PIN in the file.
      expect(await signer.sign(Buffer.from('x')).catch((e: unknown) => e)).toBeInstanceOf(HsmPinIncorrectError);
      await writeFile(pinFile, `${pins.first}\n`);
      const before = logins;
      // Within the (10 min) interval: refused fast, the file is not read, nothing is offered to the token.
      const again = await signer.sign(Buffer.from('y')).catch((e: unknown) => e);
      expect(again).toBeInstanceOf(HsmPinIncorrectError);
      noPinIn(again);
      expect(logins).toBe(before);
      expect(await slow.canSign([key])).toBe(false);
    } finally {
      await slow.close();
    }
  });
});
