// A TPM connection that breaks is reopened by the device itself: the ESYS
// context is rebuilt on a new TCTI, keys loaded before (from blobs or from a
// persistent handle) work again through the same handles, with backoff and a
// fault event per failure, and nothing is left loaded in the TPM.
import { createHash, randomBytes, verify } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice, type AgentKeyHandle, type TpmFaultEvent } from '../../src/tpm/device.js';
import { TpmConnectionError, TpmObjectError } from '../../src/tpm/tpm-error.js';
import { ecdsaSignatureDer, parseTpmtPublic, parseTpmtSignature, publicKeyFromTpmtPublic, verifyQuote } from '../../src/tpm/index.js';
import { relaySwtpm, type TpmRelay } from './tcp-proxy.js';

let sim: Swtpm;
beforeAll(async () => {
  sim = await startSwtpm();
});
afterAll(async () => {
  await sim?.stop();
});

const EK = 'rsa-2048' as const;
const PCRS = [{ bank: 'sha256' as const, pcrs: [0, 1, 2] }];

async function signs(dev: TpmDevice, key: AgentKeyHandle): Promise<boolean> {
  const msg = randomBytes(64);
  const sig = parseTpmtSignature(await dev.sign(key, createHash('sha256').update(msg).digest()));
  return verify('sha256', msg, publicKeyFromTpmtPublic(parseTpmtPublic(key.public)), ecdsaSignatureDer(sig));
}

/** Calls `fn` until it resolves; each rejection must be a TpmConnectionError. */
async function untilItWorks<T>(fn: () => Promise<T>, what: string): Promise<T> {
  for (let i = 0; i < 400; i++) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof TpmConnectionError)) throw e;
      await new Promise((r) => setTimeout(r, Math.min(e.retryInMs ?? 50, 200)));
    }
  }
  throw new Error(`${what} never worked again`);
}

describe('TPM connection lost and back', () => {
  it('swtpm gone and back on the same port: the device reopens itself and every key handle works again, no handle leaked', async () => {
    const events: TpmFaultEvent[] = [];
    const dev = await TpmDevice.open(sim.tcti, { onFault: (e) => events.push(e), reconnectBackoff: { initialMs: 50, maxMs: 400 } });
    const PERSISTENT = 0x81000310;
    try {
      const blobKey = await dev.loadAgentKey(EK, await dev.createAgentKey(EK));
      const toPersist = await dev.loadAgentKey(EK, await dev.createAgentKey(EK));
      await dev.persistAk(toPersist, PERSISTENT);
      await dev.flush(toPersist);
      const persistentKey = await dev.agentKeyFromPersistent(PERSISTENT);
      const akBlobs = await dev.createAk(EK, 'ecc-p256');
      const ak = await dev.loadAk(EK, akBlobs);
      expect(await signs(dev, blobKey)).toBe(true);
      expect((await dev.loadedHandles()).transient).toHaveLength(2);

      await sim.halt();
      const first = await dev.sign(blobKey, Buffer.alloc(32)).catch((e: unknown) => e);
      expect(first).toBeInstanceOf(TpmConnectionError);
      expect((first as TpmConnectionError).lost).toBe(true);
      expect((first as Error).message).not.toMatch(/wrong order/);
      expect(dev.connectionLost).toBe(true);
      // While the TPM is away, every reconnection attempt fails and is reported, with growing delays.
      while (events.filter((e) => e.event === 'reconnect-failed').length < 3) {
        const e = await dev.getRandom(8).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(TpmConnectionError);
        await new Promise((r) => setTimeout(r, (e as TpmConnectionError).retryInMs ?? 10));
      }
      await sim.resume();

      expect(await untilItWorks(() => signs(dev, blobKey), 'the blob agent key')).toBe(true);
      expect(dev.connectionLost).toBe(false);
      expect(await signs(dev, persistentKey)).toBe(true);
      const nonce = randomBytes(16);
      const q = await dev.quote(ak, PCRS, nonce);
      const values = await dev.pcrRead(PCRS);
      expect(() =>
        verifyQuote({ akPublic: parseTpmtPublic(akBlobs.public), attest: q.attest, signature: q.signature, nonce, expectedSelection: [{ hashAlg: 0x000b, pcrs: [0, 1, 2] }], pcrValues: [0, 1, 2].map((p) => values.get('sha256')!.get(p)!) }),
      ).not.toThrow();

      const kinds = events.map((e) => e.event);
      expect(kinds[0]).toBe('connection-lost');
      expect(kinds.at(-1)).toBe('reconnected');
      const failed = events.filter((e) => e.event === 'reconnect-failed');
      expect(failed.every((e) => e.error instanceof TpmConnectionError)).toBe(true);
      expect(failed.map((e) => e.attempt)).toEqual(failed.map((_, i) => i + 1));
      const delays = failed.map((e) => e.retryInMs!);
      expect(delays.slice(0, 4)).toEqual([50, 100, 200, 400].slice(0, Math.min(4, delays.length)));

      // Only what is loaded now: the two reloaded transient keys; no session left.
      expect(await dev.loadedHandles()).toEqual({ transient: expect.any(Array), sessions: [] });
      expect((await dev.loadedHandles()).transient).toHaveLength(2);
      await dev.flush(blobKey);
      await dev.flush(ak);
      await dev.flush(persistentKey);
      expect(await dev.loadedHandles()).toEqual({ transient: [], sessions: [] });
      await dev.evictPersistent(PERSISTENT);
    } finally {
      await dev.close();
    }
  });

  describe('only the link breaks (the TPM keeps its state)', () => {
    let relay: TpmRelay;
    beforeAll(async () => {
      relay = await relaySwtpm(sim.host, sim.port);
    });
    afterAll(async () => {
      await relay?.close();
    });

    it('a command cut off mid-way: the copies still loaded in the TPM are flushed on reconnection, then the keys reload: nothing leaks', async () => {
      const dev = await TpmDevice.open(relay.tcti);
      try {
        const key = await dev.loadAgentKey(EK, await dev.createAgentKey(EK));
        const ak = await dev.loadAk(EK, await dev.createAk(EK, 'ecc-p256'));
        const before = (await dev.loadedHandles()).transient;
        expect(before).toHaveLength(2);

        relay.cutOnNextCommand();
        const e = await dev.sign(key, Buffer.alloc(32)).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(TpmConnectionError);
        expect((e as TpmConnectionError).lost).toBe(true);

        // The next call reconnects; the TPM still held both keys: they are flushed, the agent key loaded again.
        expect(await untilItWorks(() => signs(dev, key), 'the agent key')).toBe(true);
        expect((await dev.loadedHandles()).transient).toHaveLength(1);
        await dev.quote(ak, PCRS, randomBytes(8));
        expect((await dev.loadedHandles()).transient).toHaveLength(2);
        await dev.flush(key);
        await dev.flush(ak);
        expect(await dev.loadedHandles()).toEqual({ transient: [], sessions: [] });
      } finally {
        await dev.close();
      }
    });

    it('a persistent key replaced while the link was down is refused on reload, naming the handle', async () => {
      const HANDLE = 0x81000311;
      const dev = await TpmDevice.open(relay.tcti);
      try {
        const made = await dev.loadAgentKey(EK, await dev.createAgentKey(EK));
        await dev.persistAk(made, HANDLE);
        await dev.flush(made);
        const key = await dev.agentKeyFromPersistent(HANDLE);
        expect(await signs(dev, key)).toBe(true);

        relay.cutOnNextCommand();
        await expect(dev.getRandom(8)).rejects.toBeInstanceOf(TpmConnectionError);
        // Someone else puts another key at the handle meanwhile (swtpm serves one client at a time).
        const other = await TpmDevice.open(sim.tcti);
        try {
          await other.evictPersistent(HANDLE);
          const k2 = await other.loadAgentKey(EK, await other.createAgentKey(EK));
          await other.persistAk(k2, HANDLE);
          await other.flush(k2);
        } finally {
          await other.close();
        }

        const err = await untilItWorks(() => dev.sign(key, Buffer.alloc(32)).then(() => undefined, (x: unknown) => {
          if (x instanceof TpmConnectionError) throw x;
          return x;
        }), 'the reload');
        expect(err).toBeInstanceOf(TpmObjectError);
        expect((err as Error).message).toMatch(/0x81000311 is no longer the key/);
        await dev.flush(key);
        expect(await dev.loadedHandles()).toEqual({ transient: [], sessions: [] });
        await dev.evictPersistent(HANDLE);
      } finally {
        await dev.close();
      }
    });
  });
});
