/** A growable big-endian writer for TPM structures; values are range-checked. */
import { TpmMarshalError } from './errors.js';

export class TpmWriter {
  #buf: Buffer;
  #len = 0;
  readonly #structure: string;

  constructor(structure: string, initial = 256) {
    this.#structure = structure;
    this.#buf = Buffer.allocUnsafe(initial);
  }

  #reserve(n: number): number {
    if (this.#len + n > this.#buf.length) {
      const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#len + n));
      this.#buf.copy(next, 0, 0, this.#len);
      this.#buf = next;
    }
    const at = this.#len;
    this.#len += n;
    return at;
  }

  #int(v: number, max: number, what: string): number {
    if (!Number.isInteger(v) || v < 0 || v > max) throw new TpmMarshalError(this.#structure, `${what} ${v} out of range`);
    return v;
  }

  u8(v: number): this {
    const value = this.#int(v, 0xff, 'u8');
    const at = this.#reserve(1);
    this.#buf.writeUInt8(value, at);
    return this;
  }

  u16(v: number): this {
    const value = this.#int(v, 0xffff, 'u16');
    const at = this.#reserve(2);
    this.#buf.writeUInt16BE(value, at);
    return this;
  }

  u32(v: number): this {
    const value = this.#int(v, 0xffffffff, 'u32');
    const at = this.#reserve(4);
    this.#buf.writeUInt32BE(value, at);
    return this;
  }

  u64(v: bigint): this {
    if (v < 0n || v > 0xffffffffffffffffn) throw new TpmMarshalError(this.#structure, `u64 ${v} out of range`);
    const at = this.#reserve(8);
    this.#buf.writeBigUInt64BE(v, at);
    return this;
  }

  bytes(b: Uint8Array): this {
    // Reserve first: it may replace #buf.
    const at = this.#reserve(b.length);
    this.#buf.set(b, at);
    return this;
  }

  /** A TPM2B: u16 size then the bytes; refuses more than `max` bytes. */
  sized(b: Uint8Array, max = 0xffff, field = 'TPM2B'): this {
    if (b.length > max) throw new TpmMarshalError(this.#structure, `${field} of ${b.length} bytes exceeds ${max}`);
    return this.u16(b.length).bytes(b);
  }

  toBuffer(): Buffer {
    return Buffer.from(this.#buf.subarray(0, this.#len));
  }
}
