import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ECDH, createPublicKey } from 'node:crypto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCsr, CsrError, MAX_CSR_BYTES, subjectKeyIdOf } from '../../src/server/ca/index.js';
import { readTlv } from '../../src/server/ca/der.js';
import { ecKey, makeCsr, rsaKey, run, toPem } from './helpers.js';

function expectCsrError(f: () => unknown, reason?: string): CsrError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CsrError);
    if (reason) expect((e as CsrError).reason).toBe(reason);
    return e as CsrError;
  }
  throw new Error('expected a CsrError');
}

describe('parseCsr', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-csr-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each([
    ['P-256', 'ecdsa-sha256'],
    ['P-384', 'ecdsa-sha384'],
    ['P-256', 'ecdsa-sha384'],
  ] as const)('accepts EC %s signed with %s and returns its public key', (curve, alg) => {
    const priv = ecKey(curve);
    const der = makeCsr(priv, alg);
    const parsed = parseCsr(der);
    expect(parsed.spkiDer.equals(createPublicKey(priv).export({ format: 'der', type: 'spki' }))).toBe(true);
    expect(parsed.keyType).toBe(curve === 'P-256' ? 'ec-p256' : 'ec-p384');
    expect(parsed.publicKey.asymmetricKeyType).toBe('ec');
    expect(parsed.subjectKeyId).toHaveLength(20);
    expect(parsed.subjectKeyId.equals(subjectKeyIdOf(parsed.spkiDer))).toBe(true);
  });

  it('accepts RSA-2048 with PKCS#1 v1.5 and with PSS, and PEM input', () => {
    const priv = rsaKey(2048);
    expect(parseCsr(makeCsr(priv, 'rsa-sha256')).keyType).toBe('rsa');
    const pss = parseCsr(toPem(makeCsr(priv, 'rsa-pss-sha256'), 'CERTIFICATE REQUEST'));
    expect(pss.signatureAlgorithm).toBe('RSASSA-PSS-sha256');
  });

  it('accepts CSRs made by openssl req (EC, RSA, RSA-PSS), ignoring their subject and SANs', async () => {
    const cases = [
      ['ec', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']],
      ['rsa', ['-newkey', 'rsa:2048']],
      ['pss', ['-newkey', 'rsa:2048', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32']],
    ] as const;
    for (const [name, args] of cases) {
      const csrPath = join(dir, `${name}.csr`);
      await run('openssl', ['req', '-new', ...args, '-nodes', '-keyout', join(dir, `${name}.key`), '-subj', '/CN=evil/O=attacker', '-addext', 'subjectAltName=URI:spiffe://other.org/admin', '-out', csrPath]);
      const pem = await readFile(csrPath, 'utf8');
      const parsed = parseCsr(pem);
      const key = createPublicKey(await readFile(join(dir, `${name}.key`)));
      expect(parsed.spkiDer.equals(key.export({ format: 'der', type: 'spki' }))).toBe(true);
    }
  });

  it('refuses a bad self-signature', () => {
    expectCsrError(() => parseCsr(makeCsr(ecKey(), 'ecdsa-sha256', { corruptSignature: true })), 'bad-signature');
    expectCsrError(() => parseCsr(makeCsr(rsaKey(2048), 'rsa-pss-sha256', { corruptSignature: true })), 'bad-signature');
  });

  it('refuses a CSR signed by a different key than the one it carries', () => {
    const a = makeCsr(ecKey());
    const b = makeCsr(ecKey());
    // a's info with b's signature: a valid structure whose signature is not over this key.
    const spliced = Buffer.from(a);
    const sigA = a.subarray(a.length - 72);
    const sigB = b.subarray(b.length - 72);
    if (sigA.length === sigB.length) sigB.copy(spliced, a.length - 72);
    expectCsrError(() => parseCsr(spliced));
  });

  it('refuses RSA keys under 2048 bits as weak', () => {
    expectCsrError(() => parseCsr(makeCsr(rsaKey(1024), 'rsa-sha256')), 'weak-key');
  });

  it('refuses keys on other curves', async () => {
    const csrPath = join(dir, 'k1.csr');
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp256k1', '-nodes', '-keyout', join(dir, 'k1.key'), '-subj', '/CN=x', '-out', csrPath]);
    expectCsrError(() => parseCsr(readFileSync(csrPath, 'utf8')), 'unsupported-key');
  });

  it('accepts a compressed EC point and returns the canonical uncompressed SPKI', () => {
    const priv = ecKey();
    const jwk = createPublicKey(priv).export({ format: 'jwk' });
    const raw = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
    const compressed = ECDH.convertKey(raw, 'prime256v1', undefined, undefined, 'compressed') as Buffer;
    const spki = Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), compressed]);
    const parsed = parseCsr(makeCsr(priv, 'ecdsa-sha256', { spki }));
    expect(parsed.spkiDer.equals(createPublicKey(priv).export({ format: 'der', type: 'spki' }))).toBe(true);
  });

  it('refuses an EC point that is not on the curve', () => {
    const priv = ecKey();
    const spki = createPublicKey(priv).export({ format: 'der', type: 'spki' });
    spki[spki.length - 1]! ^= 0x01;
    expectCsrError(() => parseCsr(makeCsr(priv, 'ecdsa-sha256', { spki })), 'unsupported-key');
  });

  it('refuses oversized input before parsing', () => {
    expectCsrError(() => parseCsr(Buffer.alloc(MAX_CSR_BYTES + 1, 0x30)), 'too-large');
    expectCsrError(() => parseCsr('-----BEGIN CERTIFICATE REQUEST-----\n' + 'A'.repeat(MAX_CSR_BYTES * 3)), 'too-large');
  });

  it('refuses trailing bytes and non-DER lengths', () => {
    const der = makeCsr(ecKey());
    expectCsrError(() => parseCsr(Buffer.concat([der, Buffer.from([0])])), 'bad-encoding');
    // Long-form length where short form fits.
    const nonMinimal = Buffer.from([0x30, 0x81, 0x03, 0x02, 0x01, 0x00]);
    expectCsrError(() => parseCsr(nonMinimal), 'bad-encoding');
  });

  describe('property: any damage yields CsrError, never another exception', () => {
    const good = [makeCsr(ecKey()), makeCsr(ecKey('P-384'), 'ecdsa-sha384'), makeCsr(rsaKey(2048), 'rsa-pss-sha256')];
    const attempt = (input: Uint8Array | string): void => {
      try {
        parseCsr(input);
      } catch (e) {
        if (!(e instanceof CsrError)) throw new Error(`not a CsrError: ${String(e)}`);
      }
    };

    it('random bytes', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 2048 }), (b) => {
        expect(() => parseCsr(b)).toThrow(CsrError);
      }), { numRuns: 500 });
    });

    it('random DER-looking bytes (a SEQUENCE header then garbage)', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 600 }), fc.integer({ min: 0, max: 0x82 }), (body, lenByte) => {
          attempt(Buffer.concat([Buffer.from([0x30, lenByte]), body]));
        }),
        { numRuns: 500 },
      );
    });

    it('every truncation', () => {
      for (const g of good) {
        for (let n = 0; n < g.length; n++) expect(() => parseCsr(g.subarray(0, n))).toThrow(CsrError);
      }
    });

    it('bit flips', () => {
      fc.assert(
        fc.property(fc.constantFrom(...good), fc.nat(), fc.integer({ min: 0, max: 7 }), (g, pos, bit) => {
          const b = Buffer.from(g);
          b[pos % b.length]! ^= 1 << bit;
          // A flip may land in a place that changes nothing verifiable (e.g. the ignored subject is
          // signed, so it does not); whatever happens, only CsrError may come out.
          attempt(b);
        }),
        { numRuns: 1000 },
      );
    });

    it('bit flips inside the signed part never verify', () => {
      const g = good[0]!;
      const info = readTlv(g, readTlv(g, 0).contentStart);
      fc.assert(
        fc.property(fc.integer({ min: info.start, max: info.end - 1 }), fc.integer({ min: 0, max: 7 }), (pos, bit) => {
          const b = Buffer.from(g);
          b[pos]! ^= 1 << bit;
          expect(() => parseCsr(b)).toThrow(CsrError);
        }),
        { numRuns: 300 },
      );
    });

    it('garbage strings and broken PEM', () => {
      fc.assert(fc.property(fc.string({ maxLength: 500 }), (s) => attempt(s)), { numRuns: 300 });
      const pem = toPem(good[0]!, 'CERTIFICATE REQUEST');
      fc.assert(
        fc.property(fc.nat(), fc.string({ minLength: 1, maxLength: 3 }), (pos, ins) => {
          const p = pos % pem.length;
          attempt(pem.slice(0, p) + ins + pem.slice(p));
        }),
        { numRuns: 300 },
      );
    });
  });
});
