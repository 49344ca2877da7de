/**
 * End to end with a real TPM: extend every digest of a real event log into a
 * fresh swtpm with tpm2_pcrextend, read the PCRs back with tpm2_pcrread, and
 * check that keel's replay (and verifyReplay) agree with the TPM.
 * rhel8-uefi.bin has no StartupLocality event, so PCR 0 starting at zero in
 * swtpm matches the log.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import {
  EventLogReplayError,
  EventType,
  LOG_ONLY_PCR,
  eventDigest,
  parseEventLog,
  replay,
  verifyReplay,
  type HashAlg,
} from '../../src/tpm/eventlog/index.js';

const run = promisify(execFile);
const LOG = parseEventLog(readFileSync(join(import.meta.dirname, '../data/eventlogs/rhel8-uefi.bin')));
const BANKS: HashAlg[] = ['sha1', 'sha256'];
/** PCR_DIGEST_SPECs per tpm2_pcrextend process: one process start (~10–20 ms) per batch, not per event. */
const BATCH = 32;

async function pcrread(tpm: Swtpm, pcrs: number[]): Promise<Map<HashAlg, Map<number, Buffer>>> {
  const sel = BANKS.map((b) => `${b}:${pcrs.join(',')}`).join('+');
  const { stdout } = await run('tpm2_pcrread', [sel], { env: tpm.env });
  const out = new Map<HashAlg, Map<number, Buffer>>();
  let bank: Map<number, Buffer> | undefined;
  for (const line of stdout.split('\n')) {
    const b = /^\s*(sha1|sha256):\s*$/.exec(line);
    if (b) out.set(b[1] as HashAlg, (bank = new Map()));
    const p = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$/.exec(line);
    if (p && bank) bank.set(Number(p[1]), Buffer.from(p[2]!, 'hex'));
  }
  return out;
}

describe('event log replay against swtpm', () => {
  let tpm: Swtpm;
  beforeAll(async () => {
    expect(LOG.startupLocality).toBeUndefined();
    tpm = await startSwtpm({ pcrBanks: BANKS });
  });
  afterAll(async () => {
    await tpm?.stop();
  });

  it('the TPM ends with the PCRs keel replays, in both banks', async () => {
    const specs = LOG.events
      .filter((e) => e.eventType !== EventType.EV_NO_ACTION && e.pcrIndex !== LOG_ONLY_PCR)
      .map((e) => `${e.pcrIndex}:${BANKS.map((b) => `${b}=${eventDigest(e, b)!.toString('hex')}`).join(',')}`);
    expect(specs.length).toBeGreaterThan(50);
    for (let i = 0; i < specs.length; i += BATCH) {
      await run('tpm2_pcrextend', specs.slice(i, i + BATCH), { env: tpm.env });
    }

    const ours = replay(LOG, { banks: BANKS });
    const pcrs = [...ours.get('sha256')!.keys()].sort((a, b) => a - b);
    expect(pcrs).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14]);
    const tpmValues = await pcrread(tpm, [...pcrs, 10, 23]);
    for (const bank of BANKS) {
      const read = tpmValues.get(bank)!;
      for (const pcr of pcrs) expect(read.get(pcr)!.toString('hex'), `${bank} PCR ${pcr}`).toBe(ours.get(bank)!.get(pcr)!.toString('hex'));
      // The whole quoted set, including PCRs the log never extends, verifies.
      const r = verifyReplay(LOG, bank, read);
      expect(r.matched).toEqual([...pcrs, 10, 23].sort((a, b) => a - b));
      expect(r.notInLog).toEqual([10, 23]);
    }

    // One more extend that the log does not show is caught, naming PCR and bank.
    await run('tpm2_pcrextend', [`9:sha1=${'11'.repeat(20)},sha256=${'22'.repeat(32)}`], { env: tpm.env });
    const after = await pcrread(tpm, pcrs);
    for (const bank of BANKS) {
      let err: unknown;
      try {
        verifyReplay(LOG, bank, after.get(bank)!);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(EventLogReplayError);
      expect(err).toMatchObject({ bank, pcrIndex: 9 });
    }
  });
});
