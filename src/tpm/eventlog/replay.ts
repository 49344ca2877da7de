/**
 * Replay of an event log into PCR values, and comparison with quoted PCRs.
 * PCR_Extend: new = H(old || digest). EV_NO_ACTION events are never extended.
 */
import { createHash } from 'node:crypto';
import { DIGEST_SIZES, EventType, LOG_ONLY_PCR, MAX_PCR_INDEX, type HashAlg } from './constants.js';
import { EventLogReplayError } from './errors.js';
import { eventDigest, logBanks, type EventLog } from './parse.js';

export type PcrValues = Map<number, Buffer>;

export interface ReplayOptions {
  /** Banks to replay; default: every replayable bank the log carries. */
  readonly banks?: readonly HashAlg[];
}

/**
 * PCR reset value at TPM2_Startup: PCRs 17–22 (DRTM) start at all ones, the
 * others at zero; PCR 0 takes the StartupLocality (or 4 after an H-CRTM) as
 * its last byte.
 */
export function initialPcrValue(alg: HashAlg, pcrIndex: number, startupLocality?: number): Buffer {
  const size = DIGEST_SIZES[alg];
  if (pcrIndex >= 17 && pcrIndex <= 22) return Buffer.alloc(size, 0xff);
  const v = Buffer.alloc(size);
  if (pcrIndex === 0 && startupLocality !== undefined) v[size - 1] = startupLocality;
  return v;
}

/** H-CRTM resets PCR 0 to locality 4 before anything else (TPM 2.0 Library Part 1). */
const HCRTM_LOCALITY = 4;

/**
 * The last byte PCR 0 starts with, as the log tells it: 4 when it records an
 * H-CRTM sequence, else its StartupLocality (undefined: 0). parseEventLog has
 * already refused logs where the two disagree.
 */
export function pcr0StartLocality(log: EventLog): number | undefined {
  return log.hcrtmEvent !== undefined ? HCRTM_LOCALITY : log.startupLocality;
}

/**
 * Replays `log` into each bank. The result has an entry for every PCR the log
 * extends (and PCR 0 when a StartupLocality or H-CRTM sets it); PCRs the log never
 * touches are absent. Throws EventLogReplayError if an extended event lacks a
 * digest for a requested bank, or a bank is not in the log.
 */
export function replay(log: EventLog, opts: ReplayOptions = {}): Map<HashAlg, PcrValues> {
  const present = logBanks(log);
  const banks = opts.banks ?? present;
  const out = new Map<HashAlg, PcrValues>();
  for (const bank of banks) {
    if (!present.includes(bank)) throw new EventLogReplayError(bank, undefined, 'the log has no digests for this bank');
    const pcrs: PcrValues = new Map();
    const locality = pcr0StartLocality(log);
    if (locality !== undefined) pcrs.set(0, initialPcrValue(bank, 0, locality));
    for (const e of log.events) {
      if (e.eventType === EventType.EV_NO_ACTION || e.pcrIndex === LOG_ONLY_PCR) continue;
      const d = eventDigest(e, bank);
      if (!d) throw new EventLogReplayError(bank, e.pcrIndex, `event ${e.seq} (${e.typeName}) has no ${bank} digest`, e.seq);
      const prev = pcrs.get(e.pcrIndex) ?? initialPcrValue(bank, e.pcrIndex, locality);
      pcrs.set(e.pcrIndex, createHash(bank).update(prev).update(d).digest());
    }
    out.set(bank, pcrs);
  }
  return out;
}

export interface ReplayMatch {
  readonly bank: HashAlg;
  /** Quoted PCRs whose value equals the replay, ascending. */
  readonly matched: readonly number[];
  /** Of those, PCRs the log never extends (they matched their reset value). */
  readonly notInLog: readonly number[];
}

/**
 * Checks quoted PCR values against the replay of `log` in `bank`. A quoted PCR
 * the log never extends must hold its reset value, since anything else was
 * extended by something the log does not show. Returns the matching PCRs, or
 * throws EventLogReplayError naming the first (lowest) mismatching PCR.
 */
export function verifyReplay(log: EventLog, bank: HashAlg, quotedPcrValues: ReadonlyMap<number, Buffer>): ReplayMatch {
  const replayed = replay(log, { banks: [bank] }).get(bank)!;
  const matched: number[] = [];
  const notInLog: number[] = [];
  for (const pcr of [...quotedPcrValues.keys()].sort((a, b) => a - b)) {
    if (!Number.isInteger(pcr) || pcr < 0 || pcr > MAX_PCR_INDEX) {
      throw new EventLogReplayError(bank, pcr, `PCR index ${pcr} is not in 0..${MAX_PCR_INDEX}`);
    }
    const quoted = quotedPcrValues.get(pcr)!;
    if (quoted.length !== DIGEST_SIZES[bank]) {
      throw new EventLogReplayError(bank, pcr, `quoted value is ${quoted.length} bytes, a ${bank} PCR is ${DIGEST_SIZES[bank]}`);
    }
    const inLog = replayed.get(pcr);
    const expected = inLog ?? initialPcrValue(bank, pcr, pcr0StartLocality(log));
    if (!expected.equals(quoted)) {
      const why = pcr === 0 && log.hcrtmEvent !== undefined ? hcrtmMismatch(log, bank, quoted) : '';
      throw new EventLogReplayError(
        bank,
        pcr,
        `quoted ${quoted.toString('hex')} but the log replays to ${expected.toString('hex')}` +
          (inLog ? '' : ' (the log never extends this PCR)') + why,
        pcr === 0 ? log.hcrtmEvent : undefined,
      );
    }
    matched.push(pcr);
    if (!inLog) notInLog.push(pcr);
  }
  return { bank, matched, notInLog };
}

/**
 * Why PCR 0 of a log that claims an H-CRTM does not match. The claim makes PCR
 * 0 start at 00…04, a value only the TPM's own H-CRTM sequence can produce; if
 * the same events replayed from the ordinary start match the quote, the
 * "H-CRTM" digest was extended by software after TPM2_Startup.
 */
function hcrtmMismatch(log: EventLog, bank: HashAlg, quoted: Buffer): string {
  let v = initialPcrValue(bank, 0, log.startupLocality === 4 ? undefined : log.startupLocality);
  for (const e of log.events) {
    if (e.pcrIndex !== 0 || e.eventType === EventType.EV_NO_ACTION) continue;
    v = createHash(bank).update(v).update(eventDigest(e, bank)!).digest();
  }
  const head = `; the log claims an H-CRTM sequence (event ${log.hcrtmEvent}, EV_EFI_HCRTM_EVENT), which starts PCR 0 at 00…04`;
  return v.equals(quoted)
    ? `${head}, but the quote matches the same events from the ordinary start: the TPM did not run that H-CRTM, its digest was extended by software`
    : `${head}, and the TPM's PCR 0 matches neither that nor the ordinary start`;
}
