/**
 * Quotes verified per second by keel's verifier (parse attest and signature,
 * ECDSA verify, nonce, selection, PCR digest), against the limit measured in
 * the same run: node:crypto verifying the same signature over the same bytes.
 * The quotes come from a real swtpm. Run: node --import tsx bench/tpm-verify.ts
 */
import { randomBytes, verify } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { startSwtpm } from '../simulator/swtpm.js';
import { TpmDevice } from '../src/tpm/device.js';
import { TPM_ALG, parseTpmtPublic, parseTpmtSignature, pcrSelection, publicKeyFromTpmtPublic, verifyQuote } from '../src/tpm/index.js';

const PCRS = [0, 1, 2, 3, 4, 5, 6, 7];
const N = 64;
const sim = await startSwtpm();
const dev = await TpmDevice.open(sim.tcti);
const rows: [string, string, string][] = [];
try {
  for (const akKind of ['ecc-p256', 'rsa-2048'] as const) {
    const blobs = await dev.createAk('rsa-2048', akKind);
    const ak = await dev.loadAk('rsa-2048', blobs);
    const akPublic = parseTpmtPublic(blobs.public);
    const key = publicKeyFromTpmtPublic(akPublic);
    const sel = [{ bank: 'sha256' as const, pcrs: PCRS }];
    const values = (await dev.pcrRead(sel)).get('sha256')!;
    const pcrValues = PCRS.map((p) => values.get(p)!);
    const quotes: { nonce: Buffer; attest: Buffer; signature: Buffer }[] = [];
    for (let i = 0; i < N; i++) {
      const nonce = randomBytes(32);
      quotes.push({ nonce, ...(await dev.quote(ak, sel, nonce)) });
    }
    await dev.flush(ak);
    const expectedSelection = pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: PCRS });

    const rate = (fn: (i: number) => void): number => {
      for (let i = 0; i < 200; i++) fn(i % N);
      let n = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < 1500) {
        fn(n % N);
        n++;
      }
      return n / ((performance.now() - t0) / 1000);
    };
    // The limit: a bare signature check of the same quote, as node:crypto does it.
    const raw = rate((i) => {
      const q = quotes[i]!;
      const sig = parseTpmtSignature(q.signature);
      const ok =
        'r' in sig
          ? verify('sha256', q.attest, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([pad(sig.r), pad(sig.s)]))
          : 'sig' in sig && verify('sha256', q.attest, key, sig.sig);
      if (!ok) throw new Error('raw verify failed');
    });
    const keel = rate((i) => {
      const q = quotes[i]!;
      verifyQuote({ akPublic, attest: q.attest, signature: q.signature, nonce: q.nonce, expectedSelection, pcrValues });
    });
    rows.push([`${akKind} AK: keel verifyQuote`, keel.toFixed(0), 'quotes/s']);
    rows.push([`${akKind} AK: node:crypto signature check alone (limit)`, raw.toFixed(0), 'verifies/s']);
    rows.push([`${akKind} AK: keel / limit`, (keel / raw).toFixed(2), 'ratio']);
  }
} finally {
  await dev.close();
  await sim.stop();
}
function pad(b: Buffer): Buffer {
  return b.length >= 32 ? b : Buffer.concat([Buffer.alloc(32 - b.length), b]);
}
console.log(`\nQuote verification, one core, quotes from swtpm (8 sha256 PCRs)\n`);
console.log('| name | value | unit |');
console.log('| --- | ---: | --- |');
for (const [n, v, u] of rows) console.log(`| ${n} | ${v} | ${u} |`);
