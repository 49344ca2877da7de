import { generateKeyPairSync, sign, verify } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { derToP1363, InvalidEcdsaSignatureError, p1363ToDer } from '../../src/hsm/index.js';
import { decodeEcPoint, InvalidPublicKeyError } from '../../src/hsm/key-material.js';

describe('ECDSA signature formats', () => {
  it('converts node:crypto signatures both ways (P-256 and P-384), and both forms verify', () => {
    for (const [curve, size] of [['P-256', 32], ['P-384', 48]] as const) {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
      for (let i = 0; i < 50; i++) {
        const data = Buffer.from(`m${i}`);
        const der = sign('sha256', data, privateKey);
        const raw = derToP1363(der, size);
        expect(raw).toHaveLength(2 * size);
        expect(verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, raw)).toBe(true);
        expect(p1363ToDer(raw).equals(der)).toBe(true);
      }
    }
  });

  it('round-trips any r||s, including leading zeros and high bits', () => {
    fc.assert(
      fc.property(fc.constantFrom(32, 48, 66), fc.uint8Array({ minLength: 132, maxLength: 132 }), (size, bytes) => {
        const raw = Buffer.from(bytes.subarray(0, 2 * size));
        expect(derToP1363(p1363ToDer(raw), size).equals(raw)).toBe(true);
      }),
    );
    const zeros = Buffer.alloc(64);
    expect(derToP1363(p1363ToDer(zeros), 32).equals(zeros)).toBe(true);
  });

  it.each([
    ['empty', '', /SEQUENCE/],
    ['not a sequence', '3100', /SEQUENCE/],
    ['length mismatch', '3007020101020101', /length/],
    ['trailing data', '30060201010201010000', /length/],
    ['negative r', '3006020180020101', /negative/],
    ['non-minimal r', '300702020001020101', /non-minimal/],
    ['empty integer', '30050200020101', /truncated or empty/],
    ['r too long', `3027022201${'11'.repeat(33)}020101`, /longer than 32/],
    ['long form length', '3082000602010102010100', /length form/],
  ])('derToP1363 rejects %s', (_n, hex, reason) => {
    expect(() => derToP1363(Buffer.from(hex, 'hex'), 32)).toThrow(InvalidEcdsaSignatureError);
    expect(() => derToP1363(Buffer.from(hex, 'hex'), 32)).toThrow(reason);
  });

  it('derToP1363 on garbage: a 64-byte result or InvalidEcdsaSignatureError, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (b) => {
        try {
          expect(derToP1363(b, 32)).toHaveLength(64);
        } catch (e) {
          expect(e).toBeInstanceOf(InvalidEcdsaSignatureError);
        }
      }),
      { numRuns: 5000 },
    );
    expect(() => p1363ToDer(Buffer.alloc(63))).toThrow(InvalidEcdsaSignatureError);
    expect(() => p1363ToDer(Buffer.alloc(0))).toThrow(InvalidEcdsaSignatureError);
  });

  it('CKA_EC_POINT: accepts the OCTET STRING-wrapped and the raw form, rejects anything else', () => {
    const raw = Buffer.concat([Buffer.from([4]), Buffer.alloc(32, 1), Buffer.alloc(32, 2)]);
    const wrapped = Buffer.concat([Buffer.from([4, 65]), raw]);
    for (const v of [raw, wrapped]) {
      const { x, y } = decodeEcPoint(v, 32);
      expect(x.equals(Buffer.alloc(32, 1)) && y.equals(Buffer.alloc(32, 2))).toBe(true);
    }
    const p384 = Buffer.concat([Buffer.from([4, 0x61, 4]), Buffer.alloc(96, 3)]);
    expect(decodeEcPoint(p384, 48).x).toHaveLength(48);
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 140 }), (b) => {
        try {
          decodeEcPoint(b, 32);
        } catch (e) {
          expect(e).toBeInstanceOf(InvalidPublicKeyError);
        }
      }),
    );
    expect(() => decodeEcPoint(Buffer.concat([Buffer.from([2]), Buffer.alloc(32)]), 32)).toThrow(InvalidPublicKeyError);
  });
});
