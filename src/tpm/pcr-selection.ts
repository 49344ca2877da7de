/**
 * TPML_PCR_SELECTION (TPM 2.0 Part 2 §10.9.7): banks of PCRs as bitmaps,
 * PCR n at byte n>>3, bit n&7.
 */
import { hex16, isHashAlg } from './constants.js';
import { TpmMarshalError } from './errors.js';
import { TpmReader, parseExact } from './reader.js';
import { TpmWriter } from './writer.js';

/** HASH_COUNT of any real TPM is far below this. */
export const MAX_PCR_BANKS = 16;
/** PCR_SELECT_MAX: 32 PCRs. */
export const MAX_SIZEOF_SELECT = 4;
/** PC Client TPMs take at least 3 bytes of bitmap (24 PCRs). */
export const MIN_SIZEOF_SELECT = 3;

export interface TpmsPcrSelection {
  readonly hashAlg: number;
  /** PCR indices, ascending and unique. */
  readonly pcrs: readonly number[];
}

export type TpmlPcrSelection = readonly TpmsPcrSelection[];

/** Reads a TPML_PCR_SELECTION at the cursor. */
export function readPcrSelection(r: TpmReader): TpmlPcrSelection {
  return r.within('TPML_PCR_SELECTION', () => {
    const countAt = r.offset;
    const count = r.u32();
    if (count > MAX_PCR_BANKS) r.fail(`count ${count} exceeds ${MAX_PCR_BANKS} banks`, countAt);
    const banks: TpmsPcrSelection[] = [];
    for (let i = 0; i < count; i++) {
      banks.push(
        r.within(`pcrSelections[${i}]`, () => {
          const hashAt = r.offset;
          const hashAlg = r.u16();
          if (!isHashAlg(hashAlg)) r.fail(`${hex16(hashAlg)} is not a hash algorithm`, hashAt);
          const sizeAt = r.offset;
          const sizeofSelect = r.u8();
          if (sizeofSelect > MAX_SIZEOF_SELECT) r.fail(`sizeofSelect ${sizeofSelect} exceeds ${MAX_SIZEOF_SELECT}`, sizeAt);
          const bitmap = r.bytes(sizeofSelect);
          const pcrs: number[] = [];
          for (let n = 0; n < sizeofSelect * 8; n++) if ((bitmap[n >> 3]! >> (n & 7)) & 1) pcrs.push(n);
          return { hashAlg, pcrs };
        }),
      );
    }
    return banks;
  });
}

export function parsePcrSelection(bytes: Uint8Array): TpmlPcrSelection {
  return parseExact(bytes, readPcrSelection);
}

/** Writes a TPML_PCR_SELECTION with the smallest sizeofSelect ≥ 3 that holds every PCR. */
export function writePcrSelection(w: TpmWriter, selection: TpmlPcrSelection): void {
  if (selection.length > MAX_PCR_BANKS) throw new TpmMarshalError('TPML_PCR_SELECTION', `${selection.length} banks exceed ${MAX_PCR_BANKS}`);
  w.u32(selection.length);
  for (const bank of selection) {
    const top = bank.pcrs.reduce((m, n) => Math.max(m, n), -1);
    const size = Math.max(MIN_SIZEOF_SELECT, (top >> 3) + 1);
    const bitmap = Buffer.alloc(size);
    for (const n of bank.pcrs) {
      if (!Number.isInteger(n) || n < 0 || n >= MAX_SIZEOF_SELECT * 8) {
        throw new TpmMarshalError('TPML_PCR_SELECTION', `PCR index ${n} out of range 0..${MAX_SIZEOF_SELECT * 8 - 1}`);
      }
      bitmap[n >> 3]! |= 1 << (n & 7);
    }
    w.u16(bank.hashAlg).u8(size).bytes(bitmap);
  }
}

export function marshalPcrSelection(selection: TpmlPcrSelection): Buffer {
  const w = new TpmWriter('TPML_PCR_SELECTION', 64);
  writePcrSelection(w, selection);
  return w.toBuffer();
}

/** Builds a selection, sorting and de-duplicating the PCR indices. */
export function pcrSelection(...banks: { hashAlg: number; pcrs: Iterable<number> }[]): TpmlPcrSelection {
  return banks.map((b) => ({ hashAlg: b.hashAlg, pcrs: [...new Set(b.pcrs)].sort((a, c) => a - c) }));
}

/** The (bank, index) pairs of a selection in the order the TPM concatenates their values. */
export function selectedPcrs(selection: TpmlPcrSelection): { hashAlg: number; index: number }[] {
  return selection.flatMap((b) => [...new Set(b.pcrs)].sort((a, c) => a - c).map((index) => ({ hashAlg: b.hashAlg, index })));
}

/** Same banks in the same order, each with the same set of PCRs. */
export function pcrSelectionEquals(a: TpmlPcrSelection, b: TpmlPcrSelection): boolean {
  if (a.length !== b.length) return false;
  return a.every((x, i) => {
    const y = b[i]!;
    const xs = [...new Set(x.pcrs)].sort((p, q) => p - q);
    const ys = [...new Set(y.pcrs)].sort((p, q) => p - q);
    return x.hashAlg === y.hashAlg && xs.length === ys.length && xs.every((v, j) => v === ys[j]);
  });
}
