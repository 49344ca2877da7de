/**
 * Hostile input: whatever the bytes, parsing and everything downstream of it
 * either succeeds or throws one of the event log's typed errors; never another
 * exception, a hang or a large allocation.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  EventLogDigestError,
  EventLogParseError,
  EventLogReplayError,
  checkEventDigests,
  decodeEventData,
  logBanks,
  parseEventLog,
  replay,
  summarize,
} from '../../src/tpm/eventlog/index.js';

const DIR = join(import.meta.dirname, '../data/eventlogs');
const SEEDS = ['crypto_agile_eventlog', 'debian-10.bin', 'glinux-alex.bin', 'sb_cert_eventlog', 'short_no_action_eventlog'].map(
  (n) => readFileSync(join(DIR, n)),
);

const TYPED = [EventLogParseError, EventLogReplayError, EventLogDigestError];

/** Runs the whole pipeline; returns 'ok' or the typed error's name, rethrows anything else. */
function pipeline(bytes: Uint8Array): string {
  try {
    const log = parseEventLog(bytes);
    replay(log);
    for (const bank of logBanks(log)) {
      checkEventDigests(log, bank);
      summarize(log, bank);
    }
    for (const e of log.events) {
      try {
        decodeEventData(e);
      } catch (err) {
        if (!(err instanceof EventLogParseError)) throw err;
      }
    }
    return 'ok';
  } catch (err) {
    if (TYPED.some((t) => err instanceof t)) return (err as Error).name;
    throw err;
  }
}

const seed = fc.constantFrom(...SEEDS);

describe('event log under hostile input', () => {
  it('random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), (b) => void pipeline(b)), { numRuns: 500 });
  });

  it('a Spec ID header followed by random bytes', () => {
    const head = SEEDS[0]!.subarray(0, parseEventLog(SEEDS[0]!).events[1]!.offset); // the Spec ID event alone
    expect(parseEventLog(head).format).toBe('crypto-agile');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2048 }), (tail) => void pipeline(Buffer.concat([head, tail]))),
      { numRuns: 500 },
    );
  });

  it('truncated real logs end in a typed error or a shorter valid log', () => {
    fc.assert(
      fc.property(seed, fc.nat(), (log, n) => {
        const cut = log.subarray(0, n % (log.length + 1));
        const r = pipeline(cut);
        expect(['ok', 'EventLogParseError', 'EventLogDigestError', 'EventLogReplayError']).toContain(r);
      }),
      { numRuns: 300 },
    );
  });

  it('bit flips anywhere in real logs', () => {
    fc.assert(
      fc.property(seed, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 7 })), { minLength: 1, maxLength: 4 }), (log, flips) => {
        const b = Buffer.from(log);
        for (const [i, bit] of flips) b[i % b.length]! ^= 1 << bit;
        pipeline(b);
      }),
      { numRuns: 400 },
    );
  });

  it('absurd sizes and counts in any aligned u32/u64 field are refused without allocating them', () => {
    const before = process.memoryUsage().arrayBuffers;
    fc.assert(
      fc.property(
        seed,
        fc.nat(),
        fc.constantFrom(0xffffffff, 0x7fffffff, 0x10000000, 0x01000001, 0x00100001),
        fc.boolean(),
        (log, pos, value, wide) => {
          const b = Buffer.from(log);
          const at = pos % Math.max(1, b.length - 8);
          b.writeUInt32LE(value, at);
          if (wide) b.writeUInt32LE(value, at + 4); // the high half of a u64 length
          pipeline(b);
        },
      ),
      { numRuns: 400 },
    );
    // Each case copies a log of at most 72 KiB; a length honoured even once would show here.
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(256 * 1024 * 1024);
  });

  it('a 16 MiB log of maximal events is bounded by the event count limit', () => {
    // SHA-1 events of 32 bytes: 16 MiB would be 524288 of them.
    const ev = Buffer.alloc(32);
    ev.writeUInt32LE(5, 0);
    ev.writeUInt32LE(0x0d, 4);
    const big = Buffer.concat(Array.from({ length: 70_000 }, () => ev));
    expect(() => parseEventLog(big)).toThrow(/more than 65536 events/);
    expect(parseEventLog(big, { limits: { maxEvents: 100_000 } }).events).toHaveLength(70_000);
    expect(() => parseEventLog(Buffer.alloc(16 * 1024 * 1024 + 1))).toThrow(EventLogParseError);
  });
});
