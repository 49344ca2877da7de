/** The low-level readers of untrusted input: strict JSON, DER splitting, certificate chains. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  DerSplitError,
  StrictJsonError,
  TrustBundle,
  X509SvidError,
  parseStrictJson,
  splitDer,
  verifyX509Svid,
} from '../../src/spiffe/index.js';

describe('parseStrictJson', () => {
  it('agrees with JSON.parse on valid JSON without duplicate members', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (v) => {
        const text = JSON.stringify(v);
        // Compared as JSON text; bigints (integers beyond 2^53) as the number JSON.parse would give.
        expect(JSON.stringify(parseStrictJson(text), (_k, x: unknown) => (typeof x === 'bigint' ? Number(x) : x))).toBe(text);
      }),
      { numRuns: 500 },
    );
  });

  it('refuses duplicate member names at any depth, including __proto__', () => {
    expect(() => parseStrictJson('{"a":1,"a":2}')).toThrow(StrictJsonError);
    expect(() => parseStrictJson('{"x":[{"b":1,"b":1}]}')).toThrow(/appears twice/);
    expect(() => parseStrictJson('{"__proto__":1,"__proto__":2}')).toThrow(/appears twice/);
    const o = parseStrictJson('{"__proto__":{"polluted":true}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(o)).toBe(null);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('keeps integers beyond 2^53 exact as bigint', () => {
    expect(parseStrictJson('18446744073709551615')).toBe(18446744073709551615n);
    expect(parseStrictJson('9007199254740991')).toBe(9007199254740991);
  });

  it('refuses what RFC 8259 refuses', () => {
    for (const bad of ['', '{', '[1,]', '{"a":1,}', '01', '1.', '.5', '+1', 'NaN', "'a'", '"\u0001"', '"\\x"', '{"a" 1}', '[1] 2', '1e999']) {
      expect(() => parseStrictJson(bad), bad).toThrow(StrictJsonError);
    }
  });

  it('bounds nesting depth instead of overflowing the stack', () => {
    expect(() => parseStrictJson('['.repeat(100_000))).toThrow(StrictJsonError);
  });

  it('random text: a value or a StrictJsonError, and agreement with JSON.parse on acceptance', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.json().map((j) => j.slice(0, Math.max(0, j.length - 1)))), (s) => {
        let strict: unknown;
        try {
          strict = parseStrictJson(s);
        } catch (err) {
          expect(err).toBeInstanceOf(StrictJsonError);
          return;
        }
        expect(JSON.stringify(strict, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v))).toBe(JSON.stringify(JSON.parse(s)));
      }),
      { numRuns: 1000 },
    );
  });
});

describe('splitDer', () => {
  it('splits concatenated SEQUENCEs and refuses anything else with DerSplitError', () => {
    expect(splitDer(Buffer.from([0x30, 0x01, 0x00, 0x30, 0x00])).map((b) => Buffer.from(b).toString('hex'))).toEqual(['300100', '3000']);
    expect(() => splitDer(Buffer.from([0x30, 0x80]))).toThrow(DerSplitError); // indefinite length
    expect(() => splitDer(Buffer.from([0x30, 0x81, 0x05]))).toThrow(/non-minimal/);
    expect(() => splitDer(Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]))).toThrow(DerSplitError);
    expect(() => splitDer(Buffer.from([0x30, 0x83, 0x7f, 0xff, 0xff]))).toThrow(/too large/);
  });

  it('random bytes: a list or a DerSplitError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        try {
          const parts = splitDer(bytes);
          expect(parts.reduce((n, p) => n + p.length, 0)).toBe(bytes.length);
        } catch (err) {
          expect(err).toBeInstanceOf(DerSplitError);
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('verifyX509Svid on garbage', () => {
  it('random bytes give X509SvidError only', () => {
    const bundle = TrustBundle.create({ trustDomain: 'example.org' });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 400 }), fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([Buffer.from([0x30, 0x82, 0x01, 0x2c]), b]))), (bytes) => {
        try {
          verifyX509Svid(bytes, bundle);
        } catch (err) {
          expect(err).toBeInstanceOf(X509SvidError);
        }
      }),
      { numRuns: 500 },
    );
  });
});
