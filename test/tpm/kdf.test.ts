import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import { kdfa, kdfe } from '../../src/tpm/kdf.js';
import { TpmMarshalError, TpmUnsupportedError } from '../../src/tpm/errors.js';
import { TPM_ALG } from '../../src/tpm/constants.js';

interface KdfaVector { Name: string; HashAlg: number; Key: string; Label: string; ContextU: string; ContextV: string; Bits: number; Result: string }
interface KdfeVector { Name: string; HashAlg: number; Z: string; Label: string; ContextU: string; ContextV: string; Bits: number; Result: string }

const load = <T>(f: string): T[] => JSON.parse(readFileSync(new URL(`./vectors/${f}`, import.meta.url), 'utf8')) as T[];
const h = (s: string): Buffer => Buffer.from(s, 'hex');

describe('KDFa (published vectors)', () => {
  const vectors = load<KdfaVector>('kdfa.json');
  it('has vectors for SHA-1, SHA-256, SHA-384 and SHA-512', () => {
    expect(new Set(vectors.map((v) => v.HashAlg))).toEqual(new Set([4, 11, 12, 13]));
  });
  it.each(vectors.map((v) => [v.Name, v] as const))('%s', (_n, v) => {
    expect(kdfa(v.HashAlg, h(v.Key), v.Label, h(v.ContextU), h(v.ContextV), v.Bits).toString('hex')).toBe(v.Result);
  });
});

describe('KDFe (published vectors)', () => {
  const vectors = load<KdfeVector>('kdfe.json');
  it.each(vectors.map((v) => [v.Name, v] as const))('%s', (_n, v) => {
    expect(kdfe(v.HashAlg, h(v.Z), v.Label, h(v.ContextU), h(v.ContextV), v.Bits).toString('hex')).toBe(v.Result);
  });
});

describe('KDF input checks', () => {
  it('refuses bits out of range and labels with NUL, unknown hashes', () => {
    expect(() => kdfa(TPM_ALG.SHA256, Buffer.alloc(1), 'X', Buffer.alloc(0), Buffer.alloc(0), -1)).toThrow(TpmMarshalError);
    expect(() => kdfa(TPM_ALG.SHA256, Buffer.alloc(1), 'X', Buffer.alloc(0), Buffer.alloc(0), 2 ** 31)).toThrow(TpmMarshalError);
    expect(() => kdfe(TPM_ALG.SHA256, Buffer.alloc(1), 'A\0B', Buffer.alloc(0), Buffer.alloc(0), 8)).toThrow(TpmMarshalError);
    expect(() => kdfa(TPM_ALG.SM3_256, Buffer.alloc(1), 'X', Buffer.alloc(0), Buffer.alloc(0), 8)).toThrow(TpmUnsupportedError);
  });
});
