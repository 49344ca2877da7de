/**
 * Parser of the TCG PC Client event log, both formats:
 * - SHA-1 only (TCG_PCR_EVENT): pcrIndex u32, eventType u32, digest[20], eventSize u32, event;
 * - crypto agile: a TCG_PCR_EVENT carrying the "Spec ID Event03" (TCG_EfiSpecIdEvent) that
 *   lists the algorithms and their digest sizes, then TCG_PCR_EVENT2 records with a
 *   TPML_DIGEST_VALUES each.
 * All little-endian. Strict: any inconsistency is an EventLogParseError with the offset.
 *
 * Two rules for logs as they are found in the field:
 * - The log ends at the first all-zero event header (what the Linux kernel
 *   does): logs read from firmware memory or /sys often carry zero fill up
 *   to the size of the area reserved for them.
 * - Every TCG_PCR_EVENT2 must carry a digest for every bank the Spec ID event
 *   lists (PC Client PFP); one with fewer is an EventLogMissingDigestError.
 */
import {
  DEFAULT_LIMITS,
  EventType,
  KNOWN_ALGS,
  LOG_ONLY_PCR,
  MAX_PCR_INDEX,
  eventTypeName,
  type EventLogLimits,
  type HashAlg,
} from './constants.js';
import { EventLogHcrtmError, EventLogMissingDigestError, EventLogParseError } from './errors.js';
import { ByteReader } from './reader.js';

export interface EventDigest {
  /** TPM_ALG_ID. */
  readonly algId: number;
  /** Bank name when the algorithm is one that can be replayed. */
  readonly alg: HashAlg | undefined;
  readonly digest: Buffer;
}

export interface TcgEvent {
  /** Position in the log, 0-based (the Spec ID event of a crypto-agile log is event 0). */
  readonly seq: number;
  /** Byte offset of the event header in the raw log. */
  readonly offset: number;
  /** Byte offset of the event data in the raw log. */
  readonly dataOffset: number;
  readonly pcrIndex: number;
  readonly eventType: number;
  /** `EV_…` name of eventType. */
  readonly typeName: string;
  readonly digests: readonly EventDigest[];
  readonly data: Buffer;
}

export interface SpecIdAlgorithm {
  readonly algId: number;
  readonly alg: HashAlg | undefined;
  readonly digestSize: number;
}

export interface SpecIdEvent {
  readonly platformClass: number;
  readonly specVersion: { readonly major: number; readonly minor: number; readonly errata: number };
  readonly uintnSize: number;
  readonly algorithms: readonly SpecIdAlgorithm[];
  readonly vendorInfo: Buffer;
}

interface EventLogCommon {
  readonly events: readonly TcgEvent[];
  /** Locality from a StartupLocality EV_NO_ACTION event in PCR 0 (0, 3 or 4), if the log has one. */
  readonly startupLocality: number | undefined;
  /**
   * Sequence number of the EV_EFI_HCRTM_EVENT, if the log says an H-CRTM
   * sequence ran before TPM2_Startup (TPM 2.0 Library Part 1, H-CRTM): PCR 0
   * then starts at 00…04 and that event is its first measurement.
   */
  readonly hcrtmEvent: number | undefined;
  /** Size in bytes of the raw log. */
  readonly size: number;
  /** Bytes after the last event: from the first all-zero event header to the end (zero fill). */
  readonly padding: number;
}

export type EventLog =
  | (EventLogCommon & { readonly format: 'sha1' })
  | (EventLogCommon & { readonly format: 'crypto-agile'; readonly specId: SpecIdEvent });

export interface ParseOptions {
  readonly limits?: Partial<EventLogLimits>;
}

const SPEC_ID_03 = Buffer.from('Spec ID Event03\0', 'latin1');
const STARTUP_LOCALITY = Buffer.from('StartupLocality\0', 'latin1');
const SHA1_SIZE = 20;
/** Fixed part of a TCG_PCR_EVENT before its data: pcrIndex, eventType, digest, eventSize. */
const SHA1_HEADER = 4 + 4 + SHA1_SIZE + 4;
/**
 * The end of a crypto-agile log: a TCG_PCR_EVENT2 header with nothing in it,
 * pcrIndex, eventType, a digest count of 0 and the eventSize that then follows
 * at once, all zero. The eventSize is part of it (as in SHA1_HEADER): a header
 * of PCR 0, type 0 and no digests that carries data is an event missing its
 * digests, not zero fill.
 */
const AGILE_END_HEADER = 4 + 4 + 4 + 4;
const HCRTM_DATA = Buffer.from('HCRTM', 'latin1');
/** Bounds on the Spec ID event: no real log lists more than a handful of algorithms. */
const MAX_SPEC_ALGORITHMS = 32;
const MAX_DIGEST_SIZE = 128;

/** Parses a raw event log. The input is copied, so later changes to it do not alter the result. */
export function parseEventLog(input: Uint8Array, opts: ParseOptions = {}): EventLog {
  const limits: EventLogLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  if (!(input instanceof Uint8Array)) throw new EventLogParseError(0, 'input is not a byte array');
  if (input.length === 0) throw new EventLogParseError(0, 'log is empty');
  if (input.length > limits.maxLogBytes) {
    throw new EventLogParseError(0, `log is ${input.length} bytes, limit ${limits.maxLogBytes}`);
  }
  const raw = Buffer.from(input.buffer.slice(input.byteOffset, input.byteOffset + input.length));
  const r = new ByteReader(raw);
  const events: TcgEvent[] = [];

  if (isZeroHeader(r, SHA1_HEADER)) throw new EventLogParseError(0, 'log is empty (zero fill only)');
  const first = readSha1Event(r, 0, limits);
  const specId = isSpecIdHeader(first) ? parseSpecId(first) : undefined;
  events.push(first);
  const headerSize = specId === undefined ? SHA1_HEADER : AGILE_END_HEADER;
  while (r.remaining > 0 && !isZeroHeader(r, headerSize)) {
    checkCount(events.length, r.offset, limits);
    events.push(specId === undefined ? readSha1Event(r, events.length, limits) : readAgileEvent(r, events.length, specId, limits));
  }
  const startupLocality = findStartupLocality(events);
  const hcrtmEvent = findHcrtm(events, startupLocality);
  const common = { events, startupLocality, hcrtmEvent, size: raw.length, padding: r.remaining };
  return specId === undefined ? { format: 'sha1', ...common } : { format: 'crypto-agile', specId, ...common };
}

/**
 * The end of the log, as the Linux kernel reads it: an event header whose
 * fixed part is all zero (PCR 0, type 0, no digests or a zero one, no data),
 * or fewer bytes than a header that are all zero. No real event has such a
 * header: a crypto-agile event must list every bank, and a SHA-1 one of type
 * EV_PREBOOT_CERT with no data and a zero digest is not something firmware
 * logs. What follows it is not read.
 */
function isZeroHeader(r: ByteReader, headerSize: number): boolean {
  return r.peek(headerSize).every((b) => b === 0);
}

function checkCount(n: number, offset: number, limits: EventLogLimits): void {
  if (n >= limits.maxEvents) throw new EventLogParseError(offset, `more than ${limits.maxEvents} events`);
}

function readHeader(r: ByteReader): { offset: number; pcrIndex: number; eventType: number } {
  const offset = r.offset;
  const pcrIndex = r.u32('pcrIndex');
  if (pcrIndex > MAX_PCR_INDEX && pcrIndex !== LOG_ONLY_PCR) r.fail(`pcrIndex ${pcrIndex} is above ${MAX_PCR_INDEX}`, offset);
  const eventType = r.u32('eventType');
  return { offset, pcrIndex, eventType };
}

function readData(r: ByteReader, limits: EventLogLimits): { dataOffset: number; data: Buffer } {
  const sizeAt = r.offset;
  const size = r.u32('eventSize');
  if (size > limits.maxEventBytes) r.fail(`eventSize ${size} exceeds the ${limits.maxEventBytes}-byte limit`, sizeAt);
  const dataOffset = r.offset;
  return { dataOffset, data: r.bytes(size, 'event data') };
}

function readSha1Event(r: ByteReader, seq: number, limits: EventLogLimits): TcgEvent {
  const { offset, pcrIndex, eventType } = readHeader(r);
  const digest = r.bytes(SHA1_SIZE, 'SHA-1 digest');
  const { dataOffset, data } = readData(r, limits);
  return {
    seq, offset, dataOffset, pcrIndex, eventType, typeName: eventTypeName(eventType),
    digests: [{ algId: 0x0004, alg: 'sha1', digest }],
    data,
  };
}

function readAgileEvent(r: ByteReader, seq: number, spec: SpecIdEvent, limits: EventLogLimits): TcgEvent {
  const { offset, pcrIndex, eventType } = readHeader(r);
  const countAt = r.offset;
  const count = r.u32('digest count');
  if (count > spec.algorithms.length) {
    r.fail(`digest count ${count} exceeds the ${spec.algorithms.length} algorithms of the Spec ID event`, countAt);
  }
  const digests: EventDigest[] = [];
  for (let i = 0; i < count; i++) {
    const algAt = r.offset;
    const algId = r.u16('digest algorithm');
    const alg = spec.algorithms.find((a) => a.algId === algId);
    if (!alg) r.fail(`digest algorithm 0x${algId.toString(16)} is not listed in the Spec ID event`, algAt);
    if (digests.some((d) => d.algId === algId)) r.fail(`digest algorithm 0x${algId.toString(16)} appears twice`, algAt);
    digests.push({ algId, alg: alg.alg, digest: r.bytes(alg.digestSize, 'digest') });
  }
  if (count < spec.algorithms.length) {
    const missing = spec.algorithms.filter((a) => !digests.some((d) => d.algId === a.algId));
    throw new EventLogMissingDigestError(countAt, seq, missing.map((a) => a.alg ?? `alg 0x${a.algId.toString(16).padStart(4, '0')}`));
  }
  const { dataOffset, data } = readData(r, limits);
  return { seq, offset, dataOffset, pcrIndex, eventType, typeName: eventTypeName(eventType), digests, data };
}

function isSpecIdHeader(e: TcgEvent): boolean {
  return (
    e.eventType === EventType.EV_NO_ACTION &&
    e.data.length >= SPEC_ID_03.length &&
    e.data.subarray(0, SPEC_ID_03.length).equals(SPEC_ID_03)
  );
}

/** TCG_EfiSpecIdEvent (PFP 10.4.5.1). */
function parseSpecId(e: TcgEvent): SpecIdEvent {
  if (e.pcrIndex !== 0) throw new EventLogParseError(e.offset, 'Spec ID event is not in PCR 0');
  if (e.digests[0]?.digest.some((b) => b !== 0)) throw new EventLogParseError(e.offset, 'Spec ID event digest is not zero');
  const r = new ByteReader(e.data, e.dataOffset);
  r.bytes(SPEC_ID_03.length, 'Spec ID signature');
  const platformClass = r.u32('platformClass');
  const minor = r.u8('specVersionMinor');
  const major = r.u8('specVersionMajor');
  const errata = r.u8('specErrata');
  const uintnSize = r.u8('uintnSize');
  const nAt = r.offset;
  const n = r.u32('numberOfAlgorithms');
  if (n === 0 || n > MAX_SPEC_ALGORITHMS) r.fail(`numberOfAlgorithms ${n} is not in 1..${MAX_SPEC_ALGORITHMS}`, nAt);
  const algorithms: SpecIdAlgorithm[] = [];
  for (let i = 0; i < n; i++) {
    const at = r.offset;
    const algId = r.u16('algorithmId');
    const digestSize = r.u16('digestSize');
    const known = KNOWN_ALGS.get(algId);
    if (known && known.size !== digestSize) {
      r.fail(`algorithm ${known.alg} listed with digest size ${digestSize}, expected ${known.size}`, at);
    }
    if (digestSize === 0 || digestSize > MAX_DIGEST_SIZE) r.fail(`digest size ${digestSize} is not in 1..${MAX_DIGEST_SIZE}`, at);
    if (algorithms.some((a) => a.algId === algId)) r.fail(`algorithm 0x${algId.toString(16)} listed twice`, at);
    algorithms.push({ algId, alg: known?.alg, digestSize });
  }
  const vendorInfoSize = r.u8('vendorInfoSize');
  const vendorInfo = r.bytes(vendorInfoSize, 'vendorInfo');
  if (r.remaining !== 0) r.fail(`${r.remaining} bytes after the Spec ID event's vendorInfo`);
  return { platformClass, specVersion: { major, minor, errata }, uintnSize, algorithms, vendorInfo };
}

/** True for the StartupLocality EV_NO_ACTION event (PFP 10.4.5.3): signature then one byte of locality. */
export function isStartupLocalityEvent(e: TcgEvent): boolean {
  return (
    e.eventType === EventType.EV_NO_ACTION &&
    e.pcrIndex === 0 &&
    e.data.length >= STARTUP_LOCALITY.length &&
    e.data.subarray(0, STARTUP_LOCALITY.length).equals(STARTUP_LOCALITY)
  );
}

/**
 * The locality sets PCR 0's initial value, so it must come before anything is
 * extended into PCR 0, appear at most once, and be 0, 3 or 4.
 */
function findStartupLocality(events: readonly TcgEvent[]): number | undefined {
  let locality: number | undefined;
  let pcr0Extended = false;
  for (const e of events) {
    if (isStartupLocalityEvent(e)) {
      if (e.data.length !== STARTUP_LOCALITY.length + 1) {
        throw new EventLogParseError(e.dataOffset, `StartupLocality event data is ${e.data.length} bytes, expected 17`);
      }
      if (locality !== undefined) throw new EventLogParseError(e.offset, 'second StartupLocality event');
      if (pcr0Extended) throw new EventLogParseError(e.offset, 'StartupLocality event after PCR 0 was extended');
      const l = e.data[STARTUP_LOCALITY.length]!;
      if (l !== 0 && l !== 3 && l !== 4) {
        throw new EventLogParseError(e.dataOffset + STARTUP_LOCALITY.length, `StartupLocality ${l} is not 0, 3 or 4`);
      }
      locality = l;
    } else if (e.pcrIndex === 0 && e.eventType !== EventType.EV_NO_ACTION) {
      pcr0Extended = true;
    }
  }
  return locality;
}

/**
 * The H-CRTM event (PC Client PFP: EV_EFI_HCRTM_EVENT, data "HCRTM") records
 * the digest the TPM extended into PCR 0 during _TPM_Hash_Start/Data/End,
 * before TPM2_Startup; PCR 0 was reset to 00…04 for it. A TPM runs that
 * sequence at most once per reset and nothing can come before it in PCR 0,
 * so anything else is a log that describes an impossible TPM. A
 * StartupLocality event may accompany it only with the value 4, the one
 * that says the same thing.
 */
function findHcrtm(events: readonly TcgEvent[], startupLocality: number | undefined): number | undefined {
  let hcrtm: TcgEvent | undefined;
  let pcr0Extended = false;
  for (const e of events) {
    if (e.eventType === EventType.EV_EFI_HCRTM_EVENT) {
      const fail = (reason: string): never => {
        throw new EventLogHcrtmError(e.offset, e.seq, `event ${e.seq} (EV_EFI_HCRTM_EVENT) ${reason}`);
      };
      if (e.pcrIndex !== 0) fail(`is in PCR ${e.pcrIndex}; an H-CRTM measures into PCR 0 only`);
      if (!e.data.equals(HCRTM_DATA)) fail(`carries ${e.data.length} bytes of data, not the string "HCRTM"`);
      if (hcrtm) fail(`is the second one (the first is event ${hcrtm.seq}); the TPM runs one H-CRTM sequence per reset`);
      if (pcr0Extended) fail('comes after PCR 0 was extended; the H-CRTM measurement is the first one in PCR 0');
      if (startupLocality !== undefined && startupLocality !== 4) {
        fail(`claims PCR 0 started at 00…04, but the StartupLocality event says ${startupLocality}`);
      }
      hcrtm = e;
    }
    if (e.pcrIndex === 0 && e.eventType !== EventType.EV_NO_ACTION) pcr0Extended = true;
  }
  return hcrtm?.seq;
}

/** The digest of `event` in bank `alg`, if the event has one. */
export function eventDigest(event: TcgEvent, alg: HashAlg): Buffer | undefined {
  return event.digests.find((d) => d.alg === alg)?.digest;
}

/** Banks present in the log that can be replayed, in the Spec ID event's order. */
export function logBanks(log: EventLog): HashAlg[] {
  if (log.format === 'sha1') return ['sha1'];
  return log.specId.algorithms.flatMap((a) => (a.alg ? [a.alg] : []));
}
