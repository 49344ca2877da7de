/**
 * Quote round trip through keel's addon on swtpm: p50/p99 over 500 quotes
 * (ECDSA P-256 AK, 8 sha256 PCRs), against the floor measured in the same
 * run: the round trip of the cheapest TPM command (GetRandom 8 bytes) through
 * the same addon and TCTI. Run: node --import tsx bench/tpm-quote.ts
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { startSwtpm } from '../simulator/swtpm.js';
import { TpmDevice } from '../src/tpm/device.js';

const N = 500;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function timeIt(n: number, fn: () => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < 20; i++) await fn(); // warm-up
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return out.sort((a, b) => a - b);
}

const sim = await startSwtpm();
const dev = await TpmDevice.open(sim.tcti);
try {
  const blobs = await dev.createAk('rsa-2048', 'ecc-p256');
  const ak = await dev.loadAk('rsa-2048', blobs);
  const sel = [{ bank: 'sha256' as const, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }];
  const floor = await timeIt(N, () => dev.getRandom(8));
  const quote = await timeIt(N, () => dev.quote(ak, sel, randomBytes(32)));
  const pcr = await timeIt(N, () => dev.pcrRead(sel));
  const t0 = performance.now();
  await Promise.all(Array.from({ length: N }, () => dev.quote(ak, sel, randomBytes(32))));
  const queuedPerQuote = (performance.now() - t0) / N;
  await dev.flush(ak);

  const rows: [string, string, string][] = [
    ['GetRandom(8) p50 (floor: one TPM round trip)', pct(floor, 50).toFixed(3), 'ms'],
    ['quote p50', pct(quote, 50).toFixed(3), 'ms'],
    ['quote p99', pct(quote, 99).toFixed(3), 'ms'],
    ['quote p50 / floor p50', (pct(quote, 50) / pct(floor, 50)).toFixed(2), 'ratio'],
    ['pcrRead 8 PCRs p50', pct(pcr, 50).toFixed(3), 'ms'],
    [`${N} quotes issued at once, per quote`, queuedPerQuote.toFixed(3), 'ms'],
    ['quotes per second (sequential, p50)', (1000 / pct(quote, 50)).toFixed(0), '1/s'],
  ];
  console.log(`\nTPM quote round trip on swtpm (${N} samples each)\n`);
  console.log('| name | value | unit |');
  console.log('| --- | ---: | --- |');
  for (const [n, v, u] of rows) console.log(`| ${n} | ${v} | ${u} |`);
} finally {
  await dev.close();
  await sim.stop();
}
