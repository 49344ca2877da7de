/**
 * Logs as they are found in the field, and the two rules the parser applies to
 * them (src/tpm/eventlog/parse.ts):
 * - zero fill: the log ends at the first all-zero event header, so real logs
 *   with the zero fill of a firmware area after them parse to the same events,
 *   with `padding` saying how much was left;
 * - every bank: an agile event with fewer digests than the Spec ID event lists
 *   is an EventLogMissingDigestError naming the event and the bank.
 * The logs are the public ones of test/data/eventlogs; the changed ones are
 * derived from them here (eventlog-builder.ts), never stored.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  EventLogMissingDigestError,
  EventLogParseError,
  EventLogReplayError,
  EventType,
  parseEventLog,
  replay,
  verifyReplay,
  type EventLog,
  type HashAlg,
} from '../../src/tpm/eventlog/index.js';
import { serializeLog, type EventSpec } from './eventlog-builder.js';

const DIR = join(import.meta.dirname, '../data/eventlogs');
const raw = (name: string): Buffer => readFileSync(join(DIR, name));
const EXPECTED: Record<string, { pcrs: Partial<Record<HashAlg, Record<string, string>>> }> = JSON.parse(
  readFileSync(join(DIR, 'expected-pcrs.json'), 'utf8'),
);
/** PCR values published with a log (never computed here). */
function published(name: string, bank: HashAlg): Map<number, Buffer> {
  return new Map(Object.entries(EXPECTED[name]!.pcrs[bank]!).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')]));
}

/** One log of each shape: agile with three banks, SHA-1 format, agile with SM3 and an H-CRTM, SHA-256 only, StartupLocality 3. */
const LOGS: ReadonlyArray<{ name: string; bank: HashAlg | undefined }> = [
  { name: 'rhel8-uefi.bin', bank: 'sha256' },
  { name: 'debian-10.bin', bank: 'sha1' },
  { name: 'tpm2-tss_binary_measurements_hcrtm.bin', bank: 'sha1' },
  { name: 'crypto_agile_eventlog', bank: undefined },
  { name: 'glinux-alex.bin', bank: 'sha256' },
];
/** Header sizes: agile 16 (pcrIndex, eventType, digest count, eventSize), SHA-1 32; fills below, at and above both, and to a 64 KiB area. */
const FILLS = [1, 3, 11, 12, 15, 16, 17, 31, 32, 33, 1000];

describe('zero fill after a real log', () => {
  it.each(LOGS)('$name: the same events, padding = the fill, the same replay', ({ name, bank }) => {
    const bytes = raw(name);
    const log = parseEventLog(bytes);
    expect(log.padding).toBe(0);
    const area = Math.ceil((bytes.length + 1) / 65536) * 65536;
    for (const n of [...FILLS, area - bytes.length]) {
      const filled = parseEventLog(Buffer.concat([bytes, Buffer.alloc(n)]));
      expect(filled.events, `${n} zero bytes`).toEqual(log.events);
      expect(filled.padding).toBe(n);
      expect(filled.size).toBe(bytes.length + n);
      expect(filled.hcrtmEvent).toBe(log.hcrtmEvent);
      expect(filled.startupLocality).toBe(log.startupLocality);
      expect(replay(filled)).toEqual(replay(log));
      if (bank) expect(verifyReplay(filled, bank, published(name, bank)).matched.length).toBeGreaterThan(0);
    }
  });

  it('bytes after the log that are not all zero are not fill: a truncated event', () => {
    const bytes = raw('rhel8-uefi.bin');
    for (const tail of [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]) {
      expect(() => parseEventLog(Buffer.concat([bytes, Buffer.from(tail)]))).toThrow(EventLogParseError);
    }
  });

  it('a log of zero fill only is refused as empty', () => {
    expect(() => parseEventLog(Buffer.alloc(4096))).toThrow(/log is empty \(zero fill only\)/);
  });
});

describe('a zero header in the middle ends the log there', () => {
  it.each([
    { name: 'rhel8-uefi.bin', bank: 'sha256' as const, header: 16 },
    { name: 'debian-10.bin', bank: 'sha1' as const, header: 32 },
  ])('$name: the events before it, the rest is padding, and the hidden events fail the replay', ({ name, bank, header }) => {
    const bytes = raw(name);
    const log = parseEventLog(bytes);
    const k = 20;
    const at = log.events[k]!.offset;
    const cut = parseEventLog(Buffer.concat([bytes.subarray(0, at), Buffer.alloc(header), bytes.subarray(at)]));
    expect(cut.events).toEqual(log.events.slice(0, k));
    expect(cut.padding).toBe(bytes.length + header - at);
    // What follows the end is not read: its events are missing from the replay, which the quote catches.
    expect(() => verifyReplay(cut, bank, published(name, bank))).toThrow(EventLogReplayError);
  });

  it('an agile header of PCR 0, EV_PREBOOT_CERT and no digests that carries data is an event missing its digests, not the end', () => {
    // The end is a header with nothing in it: no digests and no data (eventSize 0), as zero fill has.
    const log = parseEventLog(raw('rhel8-uefi.bin'));
    const events: EventSpec[] = [...log.events];
    events.splice(20, 0, { pcrIndex: 0, eventType: EventType.EV_PREBOOT_CERT, digests: [], data: Buffer.from('cert') });
    let err: unknown;
    try {
      parseEventLog(serializeLog(log, events));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EventLogMissingDigestError);
    expect(err).toMatchObject({ eventIndex: 20, missingBanks: ['sha1', 'sha256', 'sha384'] });
  });
});

describe('an agile event missing a bank digest is refused', () => {
  function refusal(log: EventLog, k: number, drop: readonly number[]): EventLogMissingDigestError {
    const events = log.events.map((e, i) => (i === k ? { ...e, digests: e.digests.filter((d) => !drop.includes(d.algId)) } : e));
    try {
      parseEventLog(serializeLog(log, events));
    } catch (e) {
      expect(e).toBeInstanceOf(EventLogMissingDigestError);
      expect(e).toBeInstanceOf(EventLogParseError); // the attestor refuses parse errors as malformed
      return e as EventLogMissingDigestError;
    }
    throw new Error('the log was accepted');
  }

  it('rhel8-uefi: each bank dropped from a PCR 7 variable event, named with the event and the offset of its digest count', () => {
    const log = parseEventLog(raw('rhel8-uefi.bin'));
    const k = log.events.findIndex((e) => e.eventType === EventType.EV_EFI_VARIABLE_DRIVER_CONFIG);
    expect(k).toBeGreaterThan(0);
    // The log as serialized unchanged is the log itself (the builder writes what the parser reads).
    expect(serializeLog(log).equals(raw('rhel8-uefi.bin'))).toBe(true);
    for (const [algId, bank] of [[0x0004, 'sha1'], [0x000b, 'sha256'], [0x000c, 'sha384']] as const) {
      const e = refusal(log, k, [algId]);
      expect(e.eventIndex).toBe(k);
      expect(e.missingBanks).toEqual([bank]);
      expect(e.offset).toBe(log.events[k]!.offset + 8);
      expect(e.message).toBe(
        `event log: event ${k} carries no ${bank} digest, which the Spec ID event lists (every listed bank is required) (at byte offset ${log.events[k]!.offset + 8})`,
      );
    }
    expect(refusal(log, k, [0x0004, 0x000c]).missingBanks).toEqual(['sha1', 'sha384']);
  });

  it('the last event, and a bank keel does not replay (SM3-256 of the H-CRTM log), are named too', () => {
    const log = parseEventLog(raw('tpm2-tss_binary_measurements_hcrtm.bin'));
    const last = log.events.length - 1;
    expect(refusal(log, last, [0x000b])).toMatchObject({ eventIndex: last, missingBanks: ['sha256'] });
    expect(refusal(log, 1, [0x0012])).toMatchObject({ eventIndex: 1, missingBanks: ['alg 0x0012'] });
  });
});
