/**
 * ES256 sign rate: raw pkcs11js (sync, and async C_Sign at concurrency
 * 1/2/4/8, one session per in-flight call) vs keel's pooled HsmSigner at the
 * same concurrency vs Node's in-memory crypto.sign, on one SoftHSM token.
 * Run: node --import tsx bench/hsm-sign.ts [seconds-per-round=0.5] [rounds=7]
 * Goal: pool ≥ 90% of raw async at the same concurrency.
 */
import { createHash, generateKeyPairSync, sign as nodeSign } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { createSoftHsmToken } from '../simulator/softhsm.js';

const SECONDS = Number(process.argv[2] ?? 0.5);
const ROUNDS = Number(process.argv[3] ?? 7);
// One libuv thread per in-flight signature at the highest concurrency measured.
process.env.UV_THREADPOOL_SIZE ??= '8';

const tok = await createSoftHsmToken({ label: 'bench' });
process.env.SOFTHSM2_CONF = tok.conf;
process.env.KEEL_BENCH_PIN = tok.pin;
const { Hsm } = await import('../src/hsm/index.js');
const { Pkcs11Module } = await import('../src/hsm/module.js');

const data = Buffer.from('keel bench: a to-be-signed certificate body of realistic size'.repeat(8));
const digest = createHash('sha256').update(data).digest();

async function rate(fn: () => Promise<unknown> | unknown, concurrency: number): Promise<number> {
  const end = performance.now() + SECONDS * 1000;
  let n = 0;
  const worker = async () => {
    while (performance.now() < end) {
      await fn();
      n++;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return n / ((performance.now() - t0) / 1000);
}

/** Rate of several loops running side by side, each calling its own function. */
async function rateEach(fns: Array<() => Promise<unknown>>): Promise<number> {
  const end = performance.now() + SECONDS * 1000;
  let n = 0;
  const t0 = performance.now();
  await Promise.all(
    fns.map(async (fn) => {
      while (performance.now() < end) {
        await fn();
        n++;
      }
    }),
  );
  return n / ((performance.now() - t0) / 1000);
}

try {
  const setup = await Hsm.open({ module: tok.module, token: { label: 'bench' }, pin: { env: 'KEEL_BENCH_PIN' }, sessions: 8 });
  const key = await setup.generateKey({ label: 'bench-es256', type: 'ec-p256' });

  // Raw pkcs11js, driven by hand: own sessions, handle found once, digest given.
  const mod = Pkcs11Module.acquire(tok.module);
  const api = mod.api;
  const slot = api.C_GetSlotList(true).find((s) => api.C_GetTokenInfo(s).label.trimEnd() === 'bench')!;
  const sessions = Array.from({ length: 8 }, () => api.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION));
  api.C_FindObjectsInit(sessions[0]!, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_ID, value: key.id }]);
  const handle = api.C_FindObjects(sessions[0]!, 1)[0]!;
  api.C_FindObjectsFinal(sessions[0]!);
  const mech = { mechanism: pkcs11js.CKM_ECDSA };
  const rawSync = () => {
    const s = sessions[0]!;
    api.C_SignInit(s, mech, handle);
    return api.C_Sign(s, digest, Buffer.alloc(64));
  };
  const rawAsync = (s: Buffer) => () =>
    new Promise<Buffer>((resolve, reject) => {
      api.C_SignInit(s, mech, handle);
      const out = Buffer.alloc(64);
      api.C_Sign(s, digest, out, (err, sig) => (err ? reject(err) : resolve(sig)));
    });

  const rows: Array<[string, number, string]> = [];
  const syncRate = await rate(rawSync, 1);
  rows.push(['pkcs11js sync C_Sign (1 session)', syncRate, '—']);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const c of [1, 2, 4, 8]) {
    const hsm = await Hsm.open({ module: tok.module, token: { label: 'bench' }, pin: { env: 'KEEL_BENCH_PIN' }, sessions: c });
    const signer = hsm.signer(key);
    // Raw and keel alternate in short rounds so that load from other processes on
    // this shared machine hits both alike; the median of the rounds is reported.
    const raws: number[] = [];
    const pools: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      let next = 0;
      const fns = Array.from({ length: c }, () => rawAsync(sessions[next++]!));
      raws.push(await rateEach(fns));
      pools.push(await rate(() => signer.sign(data), c));
    }
    await hsm.close();
    const raw = median(raws);
    const pooled = median(pools);
    rows.push([`pkcs11js async C_Sign, ${c} in flight (1 session each)`, raw, '1.00']);
    rows.push([`keel HsmSigner pool, ${c} sessions, ${c} in flight (hash in Node)`, pooled, (pooled / raw).toFixed(2)]);
  }
  const mem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const memRate = await rate(() => nodeSign('sha256', data, { key: mem, dsaEncoding: 'ieee-p1363' }), 1);
  rows.push(['node crypto.sign, in-memory key (sync)', memRate, `${(memRate / syncRate).toFixed(2)}× raw sync`]);

  for (const s of sessions) api.C_CloseSession(s);
  mod.release();
  await setup.close();

  console.log(`ES256, SoftHSM, median of ${ROUNDS} alternating rounds of ${SECONDS}s, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE}; "ratio to raw": keel rows vs the raw async row just above, raw async rows vs 1.`);
  console.log('| path | signs/s | ratio to raw |');
  console.log('| --- | ---: | ---: |');
  for (const [name, r, ratio] of rows) console.log(`| ${name} | ${Math.round(r).toLocaleString('en-US')} | ${ratio} |`);
} finally {
  await tok.destroy();
}
