/**
 * A bounded little-endian reader over one buffer. Every read checks the bytes
 * are there first, and every error names the absolute offset in the raw log,
 * so callers never index past the end or trust a length field unchecked.
 */
import { EventLogParseError } from './errors.js';

export class ByteReader {
  private pos = 0;

  /** `base` is the absolute offset of `buf[0]` in the raw log, for error messages. */
  constructor(
    private readonly buf: Buffer,
    private readonly base = 0,
  ) {}

  /** Absolute offset of the next byte. */
  get offset(): number {
    return this.base + this.pos;
  }

  get remaining(): number {
    return this.buf.length - this.pos;
  }

  fail(reason: string, at: number = this.offset): never {
    throw new EventLogParseError(at, reason);
  }

  private need(n: number, what: string): void {
    if (n > this.remaining) this.fail(`truncated ${what}: need ${n} bytes, ${this.remaining} left`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf.readUInt8(this.pos++);
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  /** A u64 that must fit in a safe integer; lengths and counts above `max` are refused before any allocation. */
  u64(what: string, max = Number.MAX_SAFE_INTEGER): number {
    const at = this.offset;
    this.need(8, what);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    if (v > BigInt(max)) this.fail(`${what} ${v} exceeds ${max}`, at);
    return Number(v);
  }

  /** A u64 kept exact (addresses). */
  u64Big(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A view (no copy) of the next `n` bytes. */
  bytes(n: number, what: string): Buffer {
    if (!Number.isSafeInteger(n) || n < 0) this.fail(`invalid length ${n} for ${what}`);
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** A view of the next `n` bytes (fewer at the end), without consuming them. */
  peek(n: number): Buffer {
    return this.buf.subarray(this.pos, this.pos + Math.max(0, n));
  }

  rest(): Buffer {
    return this.bytes(this.remaining, 'rest');
  }
}
