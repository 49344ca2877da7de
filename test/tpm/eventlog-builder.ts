/**
 * Test helper: writes event logs back to bytes, so tests can derive logs from
 * real ones (a digest replaced, a signature list appended, a bank dropped)
 * and say exactly what they changed. Both formats; the first event of a
 * crypto-agile log (the Spec ID event) is written in the SHA-1 format, as it is read.
 */
import { createHash } from 'node:crypto';
import type { EventLog, TcgEvent } from '../../src/tpm/eventlog/index.js';

export interface EventSpec {
  readonly pcrIndex: number;
  readonly eventType: number;
  readonly digests: readonly { readonly algId: number; readonly digest: Buffer }[];
  readonly data: Buffer;
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};
const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
};
const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};

function sha1Event(e: EventSpec): Buffer {
  const d = e.digests[0]?.digest ?? Buffer.alloc(20);
  return Buffer.concat([u32(e.pcrIndex), u32(e.eventType), d, u32(e.data.length), e.data]);
}

function agileEvent(e: EventSpec): Buffer {
  return Buffer.concat([
    u32(e.pcrIndex),
    u32(e.eventType),
    u32(e.digests.length),
    ...e.digests.flatMap((d) => [u16(d.algId), d.digest]),
    u32(e.data.length),
    e.data,
  ]);
}

/** The bytes of a log of `log`'s format holding `events` (default: its own). */
export function serializeLog(log: EventLog, events: readonly EventSpec[] = log.events): Buffer {
  if (log.format === 'sha1') return Buffer.concat(events.map(sha1Event));
  return Buffer.concat([sha1Event(events[0]!), ...events.slice(1).map(agileEvent)]);
}

/** Node hash names of the TPM algorithms a derived log may need to hash into (SM3-256 for the H-CRTM log). */
const NODE_HASH: Readonly<Record<number, string>> = { 0x0004: 'sha1', 0x000b: 'sha256', 0x000c: 'sha384', 0x000d: 'sha512', 0x0012: 'sm3' };

/** Every digest of `e` set to the hash of `bytes` in its algorithm. */
export function digestsOf(e: Pick<EventSpec, 'digests'>, bytes: Buffer): EventSpec['digests'] {
  return e.digests.map((d) => {
    const h = NODE_HASH[d.algId];
    if (!h) throw new Error(`no hash for algorithm 0x${d.algId.toString(16)}`);
    return { algId: d.algId, digest: createHash(h).update(bytes).digest() };
  });
}

/** `e` with new data, its digests recomputed over the data (the rule for the Secure Boot variables). */
export function withData(e: TcgEvent | EventSpec, data: Buffer): EventSpec {
  return { pcrIndex: e.pcrIndex, eventType: e.eventType, data, digests: digestsOf(e, data) };
}

/** EFI_GUID bytes (first three fields little-endian) of its text form. */
export function guidBytes(guid: string): Buffer {
  const h = guid.replace(/-/g, '');
  const le = (s: string): string => s.match(/../g)!.reverse().join('');
  return Buffer.from(le(h.slice(0, 8)) + le(h.slice(8, 12)) + le(h.slice(12, 16)) + h.slice(16), 'hex');
}

/** One EFI_SIGNATURE_LIST of `type` holding `entries` (all of one size, as the structure requires). */
export function signatureList(type: string, entries: readonly { owner: string; data: Buffer }[]): Buffer {
  const size = 16 + entries[0]!.data.length;
  return Buffer.concat([
    guidBytes(type),
    u32(28 + size * entries.length),
    u32(0),
    u32(size),
    ...entries.flatMap((e) => [guidBytes(e.owner), e.data]),
  ]);
}

/** A UEFI_VARIABLE_DATA event's data with `extra` appended to its VariableData. */
export function appendToVariable(eventData: Buffer, extra: Buffer): Buffer {
  const nameLen = Number(eventData.readBigUInt64LE(16));
  const dataLen = Number(eventData.readBigUInt64LE(24));
  const head = eventData.subarray(0, 16);
  const name = eventData.subarray(32, 32 + nameLen * 2);
  const data = eventData.subarray(32 + nameLen * 2, 32 + nameLen * 2 + dataLen);
  return Buffer.concat([head, u64(nameLen), u64(dataLen + extra.length), name, data, extra]);
}

/** The StartupLocality EV_NO_ACTION event (PCR 0) of an agile log with the banks of `like`. */
export function startupLocalityEvent(like: EventSpec, locality: number): EventSpec {
  return {
    pcrIndex: 0,
    eventType: 0x3,
    digests: like.digests.map((d) => ({ algId: d.algId, digest: Buffer.alloc(d.digest.length) })),
    data: Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([locality])]),
  };
}
