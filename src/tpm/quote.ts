/**
 * Verification of a TPM2_Quote made by an AK: the signature first (nothing in
 * the attest is trusted before it verifies), then what it says.
 */
import { createHash, timingSafeEqual, type KeyObject } from 'node:crypto';
import { TPM_ALG, TPM_GENERATED_VALUE, TPM_ST, digestSize, hex16, nodeHashName } from './constants.js';
import { QuoteVerificationError } from './errors.js';
import { parseTpmsAttest, type TpmsAttestQuote, type TpmsClockInfo } from './attest.js';
import { pcrSelectionEquals, selectedPcrs, type TpmlPcrSelection } from './pcr-selection.js';
import { publicKeyFromTpmtPublic, toTpmtPublic, type TpmtPublic } from './public.js';
import { parseTpmtSignature, verifyTpmSignature, type TpmtSignature } from './signature.js';

export interface VerifyQuoteInput {
  /** The AK public area (parsed, or TPM2B_PUBLIC bytes). */
  readonly akPublic: TpmtPublic | Uint8Array;
  /** The TPMS_ATTEST bytes exactly as signed (the contents of the TPM2B_ATTEST). */
  readonly attest: Uint8Array;
  /** TPMT_SIGNATURE (parsed, or its bytes). */
  readonly signature: TpmtSignature | Uint8Array;
  /** The nonce the verifier issued for this quote. */
  readonly nonce: Uint8Array;
  /** The PCR selection the verifier asked for. */
  readonly expectedSelection: TpmlPcrSelection;
  /** The PCR values reported with the quote, in selection order (bank by bank, ascending index). */
  readonly pcrValues: readonly Uint8Array[];
  /** Clock info of the last verified quote of the same TPM, to refuse replays of older quotes. */
  readonly previous?: TpmsClockInfo;
}

export interface VerifiedQuote {
  readonly attest: TpmsAttestQuote;
  readonly clockInfo: TpmsClockInfo;
  /** The algorithm of the signature and of pcrDigest. */
  readonly hashAlg: number;
}

function fail(reason: QuoteVerificationError['reason'], detail: string, cause?: unknown): never {
  const e = new QuoteVerificationError(reason, detail);
  if (cause !== undefined) (e as { cause?: unknown }).cause = cause;
  throw e;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Refuses a quote whose clock went backwards against an earlier quote of the
 * same TPM: a larger resetCount always orders after; within a reset a larger
 * restartCount orders after; within a restart the clock must not decrease.
 */
export function checkClockProgress(previous: TpmsClockInfo, current: TpmsClockInfo): void {
  if (current.resetCount !== previous.resetCount) {
    if (current.resetCount < previous.resetCount) {
      fail('clock-rollback', `resetCount ${current.resetCount} < previous ${previous.resetCount}`);
    }
    return;
  }
  if (current.restartCount !== previous.restartCount) {
    if (current.restartCount < previous.restartCount) {
      fail('clock-rollback', `restartCount ${current.restartCount} < previous ${previous.restartCount} within one reset`);
    }
    return;
  }
  if (current.clock < previous.clock) fail('clock-rollback', `clock ${current.clock} < previous ${previous.clock}`);
}

function schemeMatches(ak: TpmtPublic, sig: TpmtSignature): string | null {
  if (sig.sigAlg === TPM_ALG.NULL) return 'the signature is TPM_ALG_NULL';
  const s = ak.parameters.scheme;
  if (s) {
    if (!('hashAlg' in s) || s.scheme !== sig.sigAlg || s.hashAlg !== sig.hashAlg) {
      return `signature ${hex16(sig.sigAlg)}/${hex16(sig.hashAlg)} is not the AK's scheme ${hex16(s.scheme)}/${'hashAlg' in s ? hex16(s.hashAlg) : '-'}`;
    }
    return null;
  }
  const ok = ak.type === TPM_ALG.RSA
    ? sig.sigAlg === TPM_ALG.RSASSA || sig.sigAlg === TPM_ALG.RSAPSS
    : sig.sigAlg === TPM_ALG.ECDSA;
  return ok ? null : `signature algorithm ${hex16(sig.sigAlg)} does not fit the AK's key type`;
}

/** Verifies a quote; returns it parsed, or throws QuoteVerificationError with the reason. */
export function verifyQuote(input: VerifyQuoteInput): VerifiedQuote {
  let ak: TpmtPublic;
  let key: KeyObject;
  let sig: TpmtSignature;
  try {
    ak = toTpmtPublic(input.akPublic);
    key = publicKeyFromTpmtPublic(ak);
    sig = input.signature instanceof Uint8Array ? parseTpmtSignature(input.signature) : input.signature;
  } catch (e) {
    return fail('malformed', (e as Error).message, e);
  }

  const schemeProblem = schemeMatches(ak, sig);
  if (schemeProblem || sig.sigAlg === TPM_ALG.NULL) return fail('scheme', schemeProblem ?? 'NULL signature');
  let valid: boolean;
  try {
    valid = verifyTpmSignature(key, input.attest, sig);
  } catch (e) {
    return fail('scheme', (e as Error).message, e);
  }
  if (!valid) fail('signature', 'the signature does not verify with the AK over the attest bytes');

  let attest;
  try {
    attest = parseTpmsAttest(input.attest);
  } catch (e) {
    return fail('malformed', (e as Error).message, e);
  }
  if (attest.magic !== TPM_GENERATED_VALUE) fail('magic', `magic 0x${attest.magic.toString(16)} is not TPM_GENERATED_VALUE`);
  if (attest.type !== TPM_ST.ATTEST_QUOTE) fail('type', `attestation type ${hex16(attest.type)} is not TPM_ST_ATTEST_QUOTE`);

  if (input.nonce.length === 0) fail('nonce', 'no nonce was given to check against');
  if (!sameBytes(attest.extraData, input.nonce)) fail('nonce', 'extraData is not the nonce issued');

  if (!pcrSelectionEquals(attest.attested.pcrSelect, input.expectedSelection)) {
    fail('selection', 'the quoted PCR selection is not the one asked for');
  }

  const slots = selectedPcrs(attest.attested.pcrSelect);
  if (slots.length !== input.pcrValues.length) {
    fail('pcr-values', `${input.pcrValues.length} PCR values for ${slots.length} selected PCRs`);
  }
  slots.forEach((slot, i) => {
    const v = input.pcrValues[i]!;
    if (v.length !== digestSize(slot.hashAlg)) {
      fail('pcr-values', `PCR ${slot.index} of bank ${hex16(slot.hashAlg)} is ${v.length} bytes, want ${digestSize(slot.hashAlg)}`);
    }
  });
  const h = createHash(nodeHashName(sig.hashAlg));
  for (const v of input.pcrValues) h.update(v);
  if (!sameBytes(h.digest(), attest.attested.pcrDigest)) fail('pcr-digest', 'pcrDigest is not the digest of the PCR values');

  if (input.previous) checkClockProgress(input.previous, attest.clockInfo);
  return { attest, clockInfo: attest.clockInfo, hashAlg: sig.hashAlg };
}
