import fc from 'fast-check';
import { describe, it, expect, vi, afterEach } from 'vitest';
import { parseTpmtPublic, parseTpm2bPublic, marshalTpmtPublic, marshalTpm2bPublic } from '../../src/tpm/public.js';
import { parseTpmsAttest, marshalTpmsAttest } from '../../src/tpm/attest.js';
import { parseTpmtSignature, marshalTpmtSignature } from '../../src/tpm/signature.js';
import { parsePcrSelection, marshalPcrSelection } from '../../src/tpm/pcr-selection.js';
import { credentialFromTpm2ToolsFile, credentialToTpm2ToolsFile } from '../../src/tpm/credential.js';
import { unwrapEkCertificate } from '../../src/tpm/ek-cert.js';
import { EkCertificateError, TpmParseError } from '../../src/tpm/errors.js';
import { arbAttest, arbSelection, arbSignature, arbTpmtPublic } from './arbitraries.js';

interface Codec<T> {
  name: string;
  parse: (b: Uint8Array) => unknown;
  marshal: (v: T) => Buffer;
  arb: fc.Arbitrary<T>;
  /** marshal(parse(b)) === b for every b that parses */
  canonical: boolean;
}

const codecs: Codec<never>[] = [
  { name: 'TPMT_PUBLIC', parse: parseTpmtPublic, marshal: marshalTpmtPublic, arb: arbTpmtPublic, canonical: true },
  { name: 'TPM2B_PUBLIC', parse: parseTpm2bPublic, marshal: marshalTpm2bPublic, arb: arbTpmtPublic, canonical: true },
  { name: 'TPMS_ATTEST', parse: parseTpmsAttest, marshal: marshalTpmsAttest, arb: arbAttest, canonical: false },
  { name: 'TPMT_SIGNATURE', parse: parseTpmtSignature, marshal: marshalTpmtSignature, arb: arbSignature, canonical: true },
  { name: 'TPML_PCR_SELECTION', parse: parsePcrSelection, marshal: marshalPcrSelection, arb: arbSelection, canonical: false },
] as unknown as Codec<never>[];

/** Either a value or a TpmParseError: anything else (RangeError, TypeError…) fails the property. */
function parseOrParseError(parse: (b: Uint8Array) => unknown, b: Uint8Array): unknown {
  try {
    return parse(b);
  } catch (e) {
    if (!(e instanceof TpmParseError)) throw e;
    expect(e.offset).toBeGreaterThanOrEqual(0);
    expect(e.offset).toBeLessThanOrEqual(b.length);
    return e;
  }
}

describe.each(codecs.map((c) => [c.name, c] as const))('%s', (_name, c) => {
  it('round-trips: parse(marshal(x)) equals x', () => {
    fc.assert(fc.property(c.arb, (v) => {
      expect(c.parse(c.marshal(v))).toEqual(v);
    }), { numRuns: 300 });
  });

  it('refuses every truncation and every extension with TpmParseError', () => {
    fc.assert(fc.property(c.arb, fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 }), (v, cut, extra) => {
      const b = c.marshal(v);
      const short = b.subarray(0, cut % b.length);
      expect(() => c.parse(short)).toThrow(TpmParseError);
      expect(() => c.parse(Buffer.concat([b, extra]))).toThrow(TpmParseError);
    }), { numRuns: 300 });
  });

  it('on bit flips gives TpmParseError or a structure (canonical ones re-marshal to the same bytes)', () => {
    fc.assert(fc.property(c.arb, fc.nat(), fc.integer({ min: 0, max: 7 }), (v, at, bit) => {
      const b = Buffer.from(c.marshal(v));
      b[at % b.length]! ^= 1 << bit;
      const r = parseOrParseError(c.parse, b);
      if (!(r instanceof TpmParseError) && c.canonical) expect(c.marshal(r as never).equals(b)).toBe(true);
    }), { numRuns: 500 });
  });

  it('on random bytes gives TpmParseError or a structure', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 700 }), (b) => {
      const r = parseOrParseError(c.parse, b);
      if (!(r instanceof TpmParseError) && c.canonical) expect(c.marshal(r as never).equals(Buffer.from(b))).toBe(true);
    }), { numRuns: 500 });
  });
});

describe('size fields larger than the input', () => {
  afterEach(() => vi.restoreAllMocks());

  it('are refused at the size field without allocating for the claimed size', () => {
    const sizes: number[] = [];
    const record = (n: unknown) => (typeof n === 'number' ? sizes.push(n) : n && typeof n === 'object' && 'length' in n ? sizes.push((n as { length: number }).length) : 0);
    const wrap = <K extends 'alloc' | 'allocUnsafe' | 'from'>(k: K) => {
      const orig = Buffer[k].bind(Buffer) as (...a: unknown[]) => Buffer;
      vi.spyOn(Buffer, k).mockImplementation(((...a: unknown[]) => {
        record(a[0]);
        return orig(...a);
      }) as never);
    };
    wrap('alloc');
    wrap('allocUnsafe');
    wrap('from');
    const ten = Buffer.from([0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8]);
    sizes.length = 0;
    for (const parse of [parseTpm2bPublic, parseTpmtPublic, parseTpmsAttest, parseTpmtSignature, parsePcrSelection]) {
      expect(() => parse(ten)).toThrow(TpmParseError);
    }
    // a TPM2B_PUBLIC claiming 65535 bytes
    expect(() => parseTpm2bPublic(ten)).toThrow(/size 65535 but only 8 byte/);
    // a TPML_PCR_SELECTION claiming 2^32-1 banks
    expect(() => parsePcrSelection(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0x0b, 3, 0xff, 0, 0]))).toThrow(/count 4294967295 exceeds 16/);
    // an attest whose extraData claims 65535
    const attest = Buffer.concat([Buffer.from('ff5443478018', 'hex'), Buffer.from([0, 0]), Buffer.from([0xff, 0xff]), Buffer.alloc(4)]);
    expect(() => parseTpmsAttest(attest)).toThrow(/extraData.*size 65535 exceeds the maximum 66/);
    expect(Math.max(0, ...sizes)).toBeLessThanOrEqual(16);
  });

  it('caps sizeofSelect at 4 and reports the byte offset', () => {
    try {
      parsePcrSelection(Buffer.from('00000001000b05ffffffffff', 'hex'));
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(TpmParseError);
      expect((e as TpmParseError).offset).toBe(6);
      expect((e as TpmParseError).structure).toBe('TPML_PCR_SELECTION.pcrSelections[0]');
    }
  });
});

describe('other untrusted-input parsers', () => {
  it('tpm2-tools credential files: TpmParseError or a credential that re-serialises', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (b, withHeader) => {
      const bytes = withHeader ? Buffer.concat([Buffer.from('badcc0de00000001', 'hex'), b]) : Buffer.from(b);
      const r = parseOrParseError(credentialFromTpm2ToolsFile, bytes);
      if (!(r instanceof TpmParseError)) expect(credentialToTpm2ToolsFile(r as never).equals(bytes)).toBe(true);
    }), { numRuns: 500 });
  });

  it('EK certificate NV contents: EkCertificateError or a DER prefix of the input', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom('', '30', '3082', '1001'), (b, prefix) => {
      const bytes = Buffer.concat([Buffer.from(prefix, 'hex'), b]);
      try {
        const der = unwrapEkCertificate(bytes);
        expect(der[0]).toBe(0x30);
        expect(bytes.includes(der)).toBe(true);
      } catch (e) {
        expect(e).toBeInstanceOf(EkCertificateError);
      }
    }), { numRuns: 500 });
  });
});
