/**
 * Certificate serial numbers: 16 random bytes (~127 bits of entropy, well
 * above the 64 the CA/B Forum asks for), top bit cleared so the INTEGER is
 * positive and first byte non-zero so its DER form is always exactly 16 bytes.
 */
import { randomFillSync } from 'node:crypto';

const POOL_SERIALS = 256;
let pool = Buffer.alloc(0);
let offset = 0;

export function randomSerial(): Buffer {
  if (offset + 16 > pool.length) {
    // One getrandom per 256 serials: the hot path should not pay a syscall each time.
    pool = randomFillSync(Buffer.allocUnsafe(16 * POOL_SERIALS));
    offset = 0;
  }
  const serial = Buffer.from(pool.subarray(offset, offset + 16));
  offset += 16;
  serial[0] = serial[0]! & 0x7f;
  if (serial[0] === 0) serial[0] = 1;
  return serial;
}
