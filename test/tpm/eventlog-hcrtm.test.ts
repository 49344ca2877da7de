/**
 * H-CRTM (TPM 2.0 Library Part 1, H-CRTM event sequence; PC Client PFP
 * EV_EFI_HCRTM_EVENT): PCR 0 starts at 00…04 and the H-CRTM digest is its
 * first measurement. The genuine log is tpm2-tss's H-CRTM machine, checked
 * against the PCR 0 its publishers read from that machine; the refusals are
 * that log with one thing changed (see eventlog-builder.ts).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  EventLogHcrtmError,
  EventLogParseError,
  EventLogReplayError,
  EventType,
  parseEventLog,
  pcr0StartLocality,
  replay,
  verifyReplay,
  type TcgEvent,
} from '../../src/tpm/eventlog/index.js';
import { serializeLog, startupLocalityEvent, type EventSpec } from './eventlog-builder.js';

const DIR = join(import.meta.dirname, '../data/eventlogs');
const NAME = 'tpm2-tss_binary_measurements_hcrtm.bin';
const RAW = readFileSync(join(DIR, NAME));
const LOG = parseEventLog(RAW);
/** Published with the log (tpm2-tss test/unit/fapi-eventlog.c), never computed here. */
const PUBLISHED_PCR0_SHA1: string = JSON.parse(readFileSync(join(DIR, 'expected-pcrs.json'), 'utf8'))[NAME].pcrs.sha1['0'];

function pcr0From(start: number, bank: 'sha1' | 'sha256', events: readonly TcgEvent[]): Buffer {
  let v = Buffer.alloc(bank === 'sha1' ? 20 : 32);
  v[v.length - 1] = start;
  for (const e of events) {
    if (e.pcrIndex !== 0 || e.eventType === EventType.EV_NO_ACTION) continue;
    v = createHash(bank).update(v).update(e.digests.find((d) => d.alg === bank)!.digest).digest();
  }
  return v;
}

/** The log with its events rearranged by `f`. */
const derived = (f: (events: EventSpec[]) => EventSpec[]): Buffer => serializeLog(LOG, f([...LOG.events]));

function hcrtmRefusal(bytes: Buffer): EventLogHcrtmError {
  try {
    parseEventLog(bytes);
  } catch (e) {
    expect(e).toBeInstanceOf(EventLogHcrtmError);
    expect(e).toBeInstanceOf(EventLogParseError); // callers that map parse errors keep refusing it
    return e as EventLogHcrtmError;
  }
  throw new Error('the log was accepted');
}

describe('a genuine H-CRTM log', () => {
  it('is recognised: event 1 is the EV_EFI_HCRTM_EVENT, no StartupLocality, PCR 0 starts at 4', () => {
    expect(LOG.hcrtmEvent).toBe(1);
    expect(LOG.events[1]!.typeName).toBe('EV_EFI_HCRTM_EVENT');
    expect(LOG.startupLocality).toBeUndefined();
    expect(pcr0StartLocality(LOG)).toBe(4);
  });

  it('replays to the PCR 0 its machine reported, which only the 00…04 start gives', () => {
    expect(replay(LOG).get('sha1')!.get(0)!.toString('hex')).toBe(PUBLISHED_PCR0_SHA1);
    expect(pcr0From(4, 'sha1', LOG.events).toString('hex')).toBe(PUBLISHED_PCR0_SHA1);
    expect(pcr0From(0, 'sha1', LOG.events).toString('hex')).not.toBe(PUBLISHED_PCR0_SHA1);
    expect(verifyReplay(LOG, 'sha1', new Map([[0, Buffer.from(PUBLISHED_PCR0_SHA1, 'hex')]])).matched).toEqual([0]);
  });

  it('is refused, naming the H-CRTM, against a TPM whose PCR 0 got the same digests by PCR_Extend from zero', () => {
    for (const bank of ['sha1', 'sha256'] as const) {
      const faked = pcr0From(0, bank, LOG.events);
      let err: unknown;
      try {
        verifyReplay(LOG, bank, new Map([[0, faked]]));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(EventLogReplayError);
      expect(err).toMatchObject({ bank, pcrIndex: 0, eventIndex: 1 });
      expect((err as Error).message).toMatch(/claims an H-CRTM sequence \(event 1, EV_EFI_HCRTM_EVENT\).*did not run that H-CRTM, its digest was extended by software/);
    }
    // Any other PCR 0: still named, without the guess.
    expect(() => verifyReplay(LOG, 'sha256', new Map([[0, Buffer.alloc(32, 7)]]))).toThrow(/claims an H-CRTM sequence .* matches neither/);
  });

  it('with a StartupLocality of 4 (which says the same thing) is accepted and replays the same', () => {
    const bytes = derived((ev) => [ev[0]!, startupLocalityEvent(ev[1]!, 4), ...ev.slice(1)]);
    const log = parseEventLog(bytes);
    expect(log.startupLocality).toBe(4);
    expect(log.hcrtmEvent).toBe(2);
    expect(replay(log).get('sha1')!.get(0)!.toString('hex')).toBe(PUBLISHED_PCR0_SHA1);
  });
});

describe('H-CRTM claims no TPM can produce are refused with EventLogHcrtmError', () => {
  const hcrtm = LOG.events[1]!;

  it.each([0, 3])('next to a StartupLocality of %i, which starts PCR 0 elsewhere', (locality) => {
    const e = hcrtmRefusal(derived((ev) => [ev[0]!, startupLocalityEvent(ev[1]!, locality), ...ev.slice(1)]));
    expect(e.eventIndex).toBe(2);
    expect(e.reason).toBe(`H-CRTM: event 2 (EV_EFI_HCRTM_EVENT) claims PCR 0 started at 00…04, but the StartupLocality event says ${locality}`);
  });

  it('after another PCR 0 measurement', () => {
    // EV_S_CRTM_VERSION (event 2) moved before the H-CRTM event.
    const e = hcrtmRefusal(derived((ev) => [ev[0]!, ev[2]!, ev[1]!, ...ev.slice(3)]));
    expect(e.eventIndex).toBe(2);
    expect(e.reason).toMatch(/comes after PCR 0 was extended/);
  });

  it('twice', () => {
    const e = hcrtmRefusal(derived((ev) => [ev[0]!, ev[1]!, ev[1]!, ...ev.slice(2)]));
    expect(e.eventIndex).toBe(2);
    expect(e.reason).toMatch(/second one \(the first is event 1\)/);
  });

  it('in another PCR', () => {
    const e = hcrtmRefusal(derived((ev) => [ev[0]!, { ...ev[1]!, pcrIndex: 2 }, ...ev.slice(2)]));
    expect(e.reason).toMatch(/is in PCR 2; an H-CRTM measures into PCR 0 only/);
  });

  it.each(['HCRTM\0', 'hcrtm', 'H-CRTM', ''])('with event data %j instead of "HCRTM"', (text) => {
    const e = hcrtmRefusal(derived((ev) => [ev[0]!, { ...hcrtm, data: Buffer.from(text, 'latin1') }, ...ev.slice(2)]));
    expect(e.reason).toMatch(/not the string "HCRTM"/);
  });

  it('a log without an H-CRTM keeps its StartupLocality start (glinux-alex: 3)', () => {
    const alex = parseEventLog(readFileSync(join(DIR, 'glinux-alex.bin')));
    expect(alex.hcrtmEvent).toBeUndefined();
    expect(pcr0StartLocality(alex)).toBe(3);
  });
});
