import { describe, expect, it } from 'vitest';
import { dnsNameProblem } from '../../src/spiffe/index.js';

describe('DNS names an SVID may carry (one rule for entries and the CA)', () => {
  it('accepts lowercase names and a leading wildcard over two labels', () => {
    for (const ok of ['web', 'web.example.org', '*.web.example.org', '*.example.org', 'a-1.b2']) expect(dnsNameProblem(ok)).toBeUndefined();
  });
  it('refuses, saying why: uppercase, a wildcard over one label, inner wildcards, bad labels, length', () => {
    expect(dnsNameProblem('Web.example.org')).toMatch(/lowercase/);
    expect(dnsNameProblem('*.org')).toMatch(/wildcard needs at least two labels/);
    expect(dnsNameProblem('web.*.org')).toMatch(/"\*"/);
    expect(dnsNameProblem('-web.org')).toMatch(/"-web"/);
    expect(dnsNameProblem('a..b')).toMatch(/""/);
    expect(dnsNameProblem('')).toBe('empty');
    expect(dnsNameProblem(`${'a'.repeat(63)}.`.repeat(4) + 'org')).toMatch(/253/);
    expect(dnsNameProblem(7)).toBe('not a string');
  });
});
