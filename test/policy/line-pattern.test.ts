import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LinePatternError, compileLinePattern } from '../../src/policy/index.js';

/** Patterns from the supported subset, over a small alphabet so that matches are frequent. */
const atom = fc.oneof(
  fc.constantFrom('a', 'b', ' ', '=', '.', '\\s', '\\S', '\\d', '\\w', '[ab]', '[^a]', '[a-c=]', '\\.', '\\\\', '[\\d ]', '1'),
);
const pattern: fc.Arbitrary<string> = fc.letrec<{ p: string; seq: string; item: string }>((tie) => ({
  p: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('seq'), fc.tuple(tie('seq'), tie('seq')).map(([x, y]) => `${x}|${y}`)),
  seq: fc.array(tie('item'), { minLength: 1, maxLength: 5 }).map((xs) => xs.join('')),
  item: fc.oneof(
    { depthSize: 'small' },
    atom,
    fc.tuple(atom, fc.constantFrom('*', '+', '?', '{2}', '{1,3}', '{0,}', '*?')).map(([a, q]) => a + q),
    tie('p').map((p) => `(?:${p})`),
    tie('p').map((p) => `(${p})?`),
  ),
}))
  .p.filter((p) => {
    try {
      compileLinePattern(p);
      return true;
    } catch {
      return false; // nested unbounded quantifiers are refused; covered below
    }
  });
const line = fc.string({ unit: fc.constantFrom('a', 'b', ' ', '=', '.', '1', '\\', 'c'), maxLength: 12 });

describe('command-line patterns', () => {
  it('agree with JS RegExp (anchored) on the supported subset', () => {
    fc.assert(
      fc.property(pattern, fc.array(line, { minLength: 1, maxLength: 8 }), (p, lines) => {
        const ours = compileLinePattern(p);
        const js = new RegExp(`^(?:${p})$`);
        for (const l of lines) expect(ours.test(l), `${p} on ${JSON.stringify(l)}`).toBe(js.test(l));
      }),
      { numRuns: 400 },
    );
  });

  it('is anchored at both ends, with optional ^ and $', () => {
    const p = compileLinePattern('root=\\S+ ro');
    expect(p.test('root=/dev/sda1 ro')).toBe(true);
    expect(p.test('x root=/dev/sda1 ro')).toBe(false);
    expect(p.test('root=/dev/sda1 ro quiet')).toBe(false);
    expect(compileLinePattern('^a.*$').test('abc')).toBe(true);
    expect(compileLinePattern('a\\$').test('a$')).toBe(true);
  });

  it.each([
    ['(a+)+', /nested unbounded quantifiers/],
    ['(a*)*b', /nested unbounded quantifiers/],
    ['(\\S+ )*', /nested unbounded quantifiers/],
    ['(?:x|y+){2,}', /nested unbounded quantifiers/],
    ['(a)\\1', /backreferences/],
    ['(?=a)a', /lookaround/],
    ['(?<n>a)', /lookaround and named groups/],
    ['\\bquiet', /word boundaries/],
    ['a**', /two quantifiers/],
    ['a{2,1}', /m < n/],
    ['a{5000}', /above 1000/],
    ['(a{1000}){1000}', /too large/],
    ['a(b', /unclosed '\('/],
    ['a)b', /unbalanced/],
    ['[b-a]', /out of order/],
    ['a^b', /only allowed at the start or end/],
    ['\\q', /unknown escape/],
    ['x'.repeat(1025), /longer than 1024/],
  ])('refuses %s', (p, why) => {
    expect(() => compileLinePattern(p)).toThrow(LinePatternError);
    expect(() => compileLinePattern(p)).toThrow(why);
  });

  it('matches patterns that backtrack catastrophically in RegExp, on a 4 KiB hostile line, correctly', () => {
    // `.*a.*a.*c` against 4096 a's takes V8's RegExp tens of seconds; here it is one pass per character.
    const hostile = 'a'.repeat(4096);
    expect(compileLinePattern('.*a.*a.*c').test(hostile)).toBe(false);
    expect(compileLinePattern('.*a.*a.*a').test(hostile)).toBe(true);
    expect(compileLinePattern('(a|aa)*c').test(hostile)).toBe(false);
    expect(compileLinePattern('(?:a?){30}a{30}').test('a'.repeat(30))).toBe(true);
  });
});
