import { randomBytes } from 'node:crypto';
import { describe, it, expect } from 'vitest';
import { verifyQuote, checkClockProgress, type VerifyQuoteInput } from '../../src/tpm/quote.js';
import { QuoteVerificationError } from '../../src/tpm/errors.js';
import { TPM_ALG, TPM_ST } from '../../src/tpm/constants.js';
import { pcrSelection } from '../../src/tpm/pcr-selection.js';
import { marshalTpmtSignature } from '../../src/tpm/signature.js';
import { marshalTpm2bPublic } from '../../src/tpm/public.js';
import { makeQuote, pcrValuesFor, signLikeTpm, softwareAk, type AkKind } from './helpers.js';

const selection = pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }, { hashAlg: TPM_ALG.SHA1, pcrs: [7, 0] });

function fixture(kind: AkKind = 'ecdsa-p256', hashAlg: number = TPM_ALG.SHA256): VerifyQuoteInput & { ak: ReturnType<typeof softwareAk> } {
  const ak = softwareAk(kind, hashAlg);
  const nonce = randomBytes(32);
  const pcrValues = pcrValuesFor(selection);
  const q = makeQuote(ak, { nonce, selection, pcrValues });
  return { ak, akPublic: ak.pub, attest: q.attest, signature: q.signature, nonce, expectedSelection: selection, pcrValues };
}

function reasonOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(QuoteVerificationError);
    return (e as QuoteVerificationError).reason;
  }
  return 'accepted';
}

describe('verifyQuote', () => {
  it.each([
    ['ecdsa-p256', TPM_ALG.SHA256], ['ecdsa-p384', TPM_ALG.SHA384], ['rsassa', TPM_ALG.SHA256], ['rsapss', TPM_ALG.SHA256],
  ] as const)('accepts a good %s/%s quote, given parsed or as bytes', (kind, hashAlg) => {
    const f = fixture(kind, hashAlg);
    const v = verifyQuote(f);
    expect(v.attest.type).toBe(TPM_ST.ATTEST_QUOTE);
    expect(v.clockInfo).toEqual({ clock: 1000n, resetCount: 3, restartCount: 1, safe: true });
    expect(v.hashAlg).toBe(hashAlg);
    const asBytes = { ...f, akPublic: marshalTpm2bPublic(f.ak.pub), signature: marshalTpmtSignature(f.signature as never) };
    expect(verifyQuote(asBytes).attest.extraData).toEqual(f.nonce);
  });

  it('left-pads ECDSA r and s that lost leading zeros', () => {
    const ak = softwareAk('ecdsa-p256');
    const nonce = randomBytes(16);
    const pcrValues = pcrValuesFor(selection);
    const q = makeQuote(ak, { nonce, selection, pcrValues });
    // sign until r or s has a leading zero byte so that stripping changes the encoding
    for (let i = 0; i < 2000; i++) {
      const full = signLikeTpm(ak, q.attest);
      if (full.sigAlg !== TPM_ALG.ECDSA || (full.r[0] !== 0 && full.s[0] !== 0)) continue;
      const strip = (b: Buffer): Buffer => b.subarray(b.findIndex((x) => x !== 0));
      const short = { ...full, r: strip(full.r), s: strip(full.s) };
      expect(short.r.length + short.s.length).toBeLessThan(64);
      expect(verifyQuote({ akPublic: ak.pub, attest: q.attest, signature: short, nonce, expectedSelection: selection, pcrValues }).hashAlg)
        .toBe(TPM_ALG.SHA256);
      return;
    }
    throw new Error('no signature with a leading zero found');
  });

  it('refuses each kind of bad quote with its own reason', () => {
    const f = fixture();
    expect(reasonOf(() => verifyQuote({ ...f, nonce: randomBytes(32) }))).toBe('nonce');
    expect(reasonOf(() => verifyQuote({ ...f, nonce: Buffer.alloc(0) }))).toBe('nonce');
    const changed = f.pcrValues.map((v) => Buffer.from(v));
    changed[3]![0]! ^= 1;
    expect(reasonOf(() => verifyQuote({ ...f, pcrValues: changed }))).toBe('pcr-digest');
    expect(reasonOf(() => verifyQuote({ ...f, pcrValues: f.pcrValues.slice(1) }))).toBe('pcr-values');
    expect(reasonOf(() => verifyQuote({ ...f, expectedSelection: pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }) }))).toBe('selection');
    expect(reasonOf(() => verifyQuote({ ...f, akPublic: softwareAk('ecdsa-p256').pub }))).toBe('signature');
    const flipped = Buffer.from(f.attest);
    flipped[flipped.length - 1]! ^= 1;
    expect(reasonOf(() => verifyQuote({ ...f, attest: flipped }))).toBe('signature');
    expect(reasonOf(() => verifyQuote({ ...f, akPublic: softwareAk('rsassa').pub }))).toBe('scheme');
    expect(reasonOf(() => verifyQuote({ ...f, signature: Buffer.from([0, 0x18]) }))).toBe('malformed');
    expect(reasonOf(() => verifyQuote({ ...f, akPublic: Buffer.from([0, 1, 2]) }))).toBe('malformed');
  });

  it('refuses a signature whose hash is not the AK scheme hash', () => {
    const ak = softwareAk('ecdsa-p256', TPM_ALG.SHA256);
    const nonce = randomBytes(16);
    const pcrValues = pcrValuesFor(selection);
    const q = makeQuote({ ...ak, hashAlg: TPM_ALG.SHA384 }, { nonce, selection, pcrValues });
    expect(reasonOf(() => verifyQuote({ akPublic: ak.pub, attest: q.attest, signature: q.signature, nonce, expectedSelection: selection, pcrValues })))
      .toBe('scheme');
  });

  it('refuses a signed structure that lacks the TPM magic or does not parse', () => {
    const ak = softwareAk('ecdsa-p256');
    const nonce = randomBytes(16);
    const pcrValues = pcrValuesFor(selection);
    const base = { akPublic: ak.pub, nonce, expectedSelection: selection, pcrValues };
    // a quote body relabelled CREATION no longer parses: signed, but malformed
    const relabelled = makeQuote(ak, { nonce, selection, pcrValues, type: TPM_ST.ATTEST_CREATION });
    expect(reasonOf(() => verifyQuote({ ...base, attest: relabelled.attest, signature: relabelled.signature }))).toBe('malformed');
    const noMagic = makeQuote(ak, { nonce, selection, pcrValues, magic: 0x12345678 });
    expect(reasonOf(() => verifyQuote({ ...base, attest: noMagic.attest, signature: noMagic.signature }))).toBe('magic');
  });

  it('refuses a CERTIFY attestation signed by the AK with reason type', async () => {
    const { marshalTpmsAttest } = await import('../../src/tpm/attest.js');
    const ak = softwareAk('ecdsa-p256');
    const nonce = randomBytes(16);
    const attest = marshalTpmsAttest({
      magic: 0xff544347, type: TPM_ST.ATTEST_CERTIFY, qualifiedSigner: Buffer.alloc(0), extraData: nonce,
      clockInfo: { clock: 1n, resetCount: 0, restartCount: 0, safe: true }, firmwareVersion: 0n,
      attested: { name: Buffer.alloc(34), qualifiedName: Buffer.alloc(34) },
    });
    const signature = signLikeTpm(ak, attest);
    expect(reasonOf(() => verifyQuote({ akPublic: ak.pub, attest, signature, nonce, expectedSelection: selection, pcrValues: [] }))).toBe('type');
  });

  it('orders quotes of one TPM by resetCount, restartCount, clock', () => {
    const c = (clock: number, resetCount: number, restartCount: number) => ({ clock: BigInt(clock), resetCount, restartCount, safe: true });
    const prev = c(5000, 3, 1);
    expect(() => checkClockProgress(prev, c(5000, 3, 1))).not.toThrow();
    expect(() => checkClockProgress(prev, c(6000, 3, 1))).not.toThrow();
    expect(() => checkClockProgress(prev, c(10, 4, 0))).not.toThrow(); // reset: the clock may restart
    expect(() => checkClockProgress(prev, c(10, 3, 2))).not.toThrow(); // restart within a reset
    expect(reasonOf(() => checkClockProgress(prev, c(4999, 3, 1)))).toBe('clock-rollback');
    expect(reasonOf(() => checkClockProgress(prev, c(9999, 3, 0)))).toBe('clock-rollback');
    expect(reasonOf(() => checkClockProgress(prev, c(9999, 2, 5)))).toBe('clock-rollback');

    const f = fixture();
    expect(reasonOf(() => verifyQuote({ ...f, previous: c(1001, 3, 1) }))).toBe('clock-rollback');
    expect(verifyQuote({ ...f, previous: c(999, 3, 1) }).clockInfo.clock).toBe(1000n);
  });
});
