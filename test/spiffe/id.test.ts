import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { InvalidSpiffeIdError, InvalidTrustDomainError, SpiffeId, TrustDomain, type SpiffeIdRule } from '../../src/spiffe/index.js';

const TD_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789.-_'.split('');
const PATH_CHARS = [...TD_CHARS, ...'ABCDEFGHIJKLMNOPQRSTUVWXYZ'.split('')];

const tdArb = fc
  .tuple(fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz'.split('')), fc.array(fc.constantFrom(...TD_CHARS), { maxLength: 40 }))
  .map(([first, rest]) => first + rest.join(''));
const segmentArb = fc
  .array(fc.constantFrom(...PATH_CHARS), { minLength: 1, maxLength: 12 })
  .map((cs) => cs.join(''))
  .filter((s) => s !== '.' && s !== '..');
const idParts = fc.record({ td: tdArb, segs: fc.array(segmentArb, { maxLength: 6 }) });
const build = (td: string, segs: readonly string[]) => `spiffe://${td}${segs.map((s) => '/' + s).join('')}`;

function ruleOf(input: string): SpiffeIdRule | 'accepted' {
  try {
    SpiffeId.parse(input);
    return 'accepted';
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidSpiffeIdError);
    expect((err as Error).message).toContain((err as InvalidSpiffeIdError).reason);
    return (err as InvalidSpiffeIdError).rule;
  }
}

describe('SpiffeId.parse, valid IDs', () => {
  it('accepts generated IDs and round-trips them through toString', () => {
    fc.assert(
      fc.property(idParts, ({ td, segs }) => {
        const input = build(td, segs);
        const id = SpiffeId.parse(input);
        expect(id.toString()).toBe(input);
        expect(id.trustDomain.name).toBe(td);
        expect(id.path).toBe(segs.map((s) => '/' + s).join(''));
        expect(id.isTrustDomainId).toBe(segs.length === 0);
        expect(SpiffeId.parse(id.toString()).equals(id)).toBe(true);
        expect(TrustDomain.parse(td).child(id.path).equals(id)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('accepts exactly 2048 bytes and a 255-byte trust domain', () => {
    const td = 'a'.repeat(255);
    let id = `spiffe://${td}`;
    while (id.length < 2048) id += '/' + 'b'.repeat(Math.min(100, Math.max(1, 2048 - id.length - 1)));
    expect(id.length).toBe(2048);
    expect(SpiffeId.parse(id).toString()).toBe(id);
    expect(ruleOf(id + 'c')).toBe('too-long');
    expect(ruleOf(`spiffe://${'a'.repeat(256)}`)).toBe('td-too-long');
  });
});

describe('SpiffeId.parse refuses each mutation with the rule it breaks', () => {
  const mutations: [string, (td: string, segs: string[], n: number) => string, SpiffeIdRule][] = [
    ['uppercase trust domain', (td, segs, n) => build(td.slice(0, n % (td.length + 1)) + 'Q' + td.slice(n % (td.length + 1)), segs), 'td-uppercase'],
    ['percent-encoding in the path', (td, segs) => build(td, [...segs, 'a%2Fb']), 'percent-encoded'],
    ['percent-encoding in the trust domain', (td, segs) => build(td + '%41', segs), 'percent-encoded'],
    ['a .. segment', (td, segs, n) => build(td, [...segs.slice(0, n % (segs.length + 1)), '..', ...segs.slice(n % (segs.length + 1))]), 'path-dot-segment'],
    ['a . segment', (td, segs) => build(td, ['.', ...segs]), 'path-dot-segment'],
    ['an empty segment', (td, segs) => build(td, [...segs, '', 'x']), 'path-empty-segment'],
    ['a port', (td, segs, n) => build(`${td}:${n % 65536}`, segs), 'td-port'],
    ['userinfo', (td, segs) => build(`user@${td}`, segs), 'td-userinfo'],
    ['userinfo with a password', (td, segs) => build(`user:pw@${td}`, segs), 'td-userinfo'],
    ['a query', (td, segs) => build(td, segs) + '?a=b', 'query'],
    ['a fragment', (td, segs) => build(td, segs) + '#frag', 'fragment'],
    ['a trailing /', (td, segs) => build(td, segs) + '/', 'path-trailing-slash'],
    ['more than 2048 bytes', (td, segs) => build(td, [...segs, ...Array<string>(200).fill('0123456789ab')]), 'too-long'],
    ['non-ASCII in the path', (td, segs) => build(td, [...segs, 'caf\u00e9']), 'path-char'],
    ['non-ASCII in the trust domain', (td, segs) => build(td + '\u00e9', segs), 'td-char'],
    ['a space in the path', (td, segs) => build(td, [...segs, 'a b']), 'path-char'],
    ['an empty trust domain', (_td, segs) => build('', ['x', ...segs]), 'td-empty'],
    ['an uppercase scheme', (td, segs) => build(td, segs).replace('spiffe', 'SPIFFE'), 'scheme'],
    ['another scheme', (td, segs) => build(td, segs).replace('spiffe', 'https'), 'scheme'],
    ['a missing //', (td, segs) => build(td, segs).replace('//', '/'), 'scheme'],
  ];
  for (const [name, mutate, rule] of mutations) {
    it(`${name} → ${rule}`, () => {
      fc.assert(
        fc.property(idParts, fc.nat(), ({ td, segs }, n) => {
          expect(ruleOf(mutate(td, segs, n))).toBe(rule);
        }),
        { numRuns: 100 },
      );
    });
  }

  it('random strings never crash: a SpiffeId or an InvalidSpiffeIdError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.string({ unit: 'binary' }), fc.string().map((s) => 'spiffe://' + s)), (s) => {
        const r = ruleOf(s);
        if (r === 'accepted') expect(SpiffeId.parse(s).toString()).toBe(s);
      }),
      { numRuns: 1000 },
    );
  });

  it('non-strings are refused, not thrown as TypeError', () => {
    expect(ruleOf(undefined as unknown as string)).toBe('not-a-string');
    expect(ruleOf(42 as unknown as string)).toBe('not-a-string');
  });
});

describe('TrustDomain', () => {
  it('parses a bare name or a trust domain ID, and refuses IDs with paths', () => {
    expect(TrustDomain.parse('example.org').idString).toBe('spiffe://example.org');
    expect(TrustDomain.parse('spiffe://example.org').name).toBe('example.org');
    for (const [input, rule] of [
      ['spiffe://example.org/path', 'td-id-has-path'],
      ['Example.org', 'td-uppercase'],
      ['example.org:443', 'td-port'],
      ['', 'td-empty'],
      ['spiffe://', 'td-empty'],
    ] as const) {
      let err: unknown;
      try {
        TrustDomain.parse(input);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidTrustDomainError);
      expect((err as InvalidTrustDomainError).rule).toBe(rule);
    }
  });

  it('child() refuses bad paths with the rule', () => {
    const td = TrustDomain.parse('example.org');
    expect(() => td.child('/a/')).toThrow(InvalidSpiffeIdError);
    expect(() => td.child('a')).toThrow(/must start with/);
    expect(td.child('').isTrustDomainId).toBe(true);
  });
});
