/** Shared set-up for the HSM integration tests: one real SoftHSM token per test file. */
import pkcs11js from 'pkcs11js';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { Pkcs11Module } from '../../src/hsm/module.js';
import type { HsmConfig } from '../../src/hsm/index.js';

export interface TestToken {
  tok: SoftHsmToken;
  /** Environment variable holding the PIN (the config names it; the PIN is never in config). */
  pinEnv: string;
  config(extra?: Partial<HsmConfig>): HsmConfig;
}

export async function testToken(label = 'keel'): Promise<TestToken> {
  const tok = await createSoftHsmToken({ label });
  // SoftHSM reads SOFTHSM2_CONF at C_Initialize: one config dir per process (per test file).
  process.env.SOFTHSM2_CONF = tok.conf;
  const pinEnv = `KEEL_TEST_PIN_${process.pid}`;
  process.env[pinEnv] = tok.pin;
  return {
    tok,
    pinEnv,
    config: (extra = {}) => ({ module: tok.module, token: { label }, pin: { env: pinEnv }, ...extra }),
  };
}

/**
 * An independent view of the same module, as another part of the process
 * would have: it holds its own reference so the module stays initialised.
 */
export function probe(modulePath: string) {
  const m = Pkcs11Module.acquire(modulePath);
  const api = m.api;
  const slotOf = (label: string): Buffer => {
    for (const s of api.C_GetSlotList(true)) if (api.C_GetTokenInfo(s).label.trimEnd() === label) return s;
    throw new Error(`no token ${label}`);
  };
  return {
    module: m,
    api,
    slotOf,
    /**
     * Live sessions of this process. SoftHSM reports ulSessionCount as
     * unavailable, so ask C_GetSessionInfo for every handle below a fresh one
     * (SoftHSM numbers sessions and objects from one counter).
     */
    countSessions(label: string): number {
      const fresh = api.C_OpenSession(slotOf(label), pkcs11js.CKF_SERIAL_SESSION);
      const max = Number(fresh.readBigUInt64LE(0));
      let n = 0;
      const h = Buffer.alloc(8);
      for (let i = 1; i < max; i++) {
        h.writeBigUInt64LE(BigInt(i));
        try {
          api.C_GetSessionInfo(h);
          n++;
        } catch {
          /* not a session */
        }
      }
      api.C_CloseSession(fresh);
      return n;
    },
    release: () => m.release(),
  };
}
