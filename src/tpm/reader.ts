/**
 * A bounded big-endian cursor over untrusted bytes. Every read is checked
 * against what remains before anything is allocated, and every failure is a
 * TpmParseError naming the structure path and the byte offset.
 */
import { TpmParseError } from './errors.js';

export class TpmReader {
  readonly #buf: Buffer;
  #pos = 0;
  #end: number;
  readonly #path: string[];

  /** `root` names the input in errors when the read functions do not name themselves. */
  constructor(input: Uint8Array, root?: string) {
    this.#buf = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
    this.#path = root ? [root] : [];
    this.#end = this.#buf.length;
  }

  get offset(): number {
    return this.#pos;
  }

  get remaining(): number {
    return this.#end - this.#pos;
  }

  /** Throws a TpmParseError for the current structure path. */
  fail(detail: string, at: number = this.#pos): never {
    throw new TpmParseError(this.#path.join('.') || 'input', at, detail);
  }

  /** Runs `read` with `name` appended to the structure path used in errors. */
  within<T>(name: string, read: () => T): T {
    this.#path.push(name);
    try {
      return read();
    } finally {
      this.#path.pop();
    }
  }

  #need(n: number): number {
    if (n > this.remaining) this.fail(`needs ${n} byte(s), ${this.remaining} left`);
    const at = this.#pos;
    this.#pos += n;
    return at;
  }

  u8(): number {
    return this.#buf.readUInt8(this.#need(1));
  }

  u16(): number {
    return this.#buf.readUInt16BE(this.#need(2));
  }

  u32(): number {
    return this.#buf.readUInt32BE(this.#need(4));
  }

  u64(): bigint {
    return this.#buf.readBigUInt64BE(this.#need(8));
  }

  /** Copies `n` bytes out (bounded by what remains, so never a large allocation). */
  bytes(n: number): Buffer {
    const at = this.#need(n);
    return Buffer.from(this.#buf.subarray(at, at + n));
  }

  /** A TPM2B: u16 size, then that many bytes; the size is checked against `max` and what remains. */
  sized(max: number): Buffer {
    const at = this.#pos;
    const size = this.u16();
    if (size > max) this.fail(`size ${size} exceeds the maximum ${max}`, at);
    if (size > this.remaining) this.fail(`size ${size} but only ${this.remaining} byte(s) left`, at);
    return this.bytes(size);
  }

  /**
   * Reads a size-prefixed structure: u16 size, then `read` must consume exactly
   * that many bytes. Offsets in errors stay relative to the whole input.
   */
  sizedStructure<T>(read: () => T): T {
    const at = this.#pos;
    const size = this.u16();
    if (size > this.remaining) this.fail(`size ${size} but only ${this.remaining} byte(s) left`, at);
    const outer = this.#end;
    this.#end = this.#pos + size;
    try {
      const value = read();
      this.end();
      return value;
    } finally {
      this.#end = outer;
    }
  }

  /** Refuses trailing bytes where a structure must fill its buffer exactly. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing byte(s)`);
  }
}

/** Parses `input` with `read` (which names its structure) and requires that it consumes every byte. */
export function parseExact<T>(input: Uint8Array, read: (r: TpmReader) => T): T {
  const r = new TpmReader(input);
  const value = read(r);
  r.end();
  return value;
}
