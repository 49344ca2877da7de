/**
 * TPMS_ATTEST (TPM 2.0 Part 2 §10.12.12): what the TPM signs in Quote,
 * Certify and CertifyCreation. The magic is kept as read, so that a verifier
 * can say "not made by a TPM" rather than "malformed".
 */
import { MAX_DATA_SIZE, MAX_DIGEST_SIZE, MAX_NAME_SIZE, TPM_ST, hex16 } from './constants.js';
import { TpmMarshalError } from './errors.js';
import { readPcrSelection, writePcrSelection, type TpmlPcrSelection } from './pcr-selection.js';
import { TpmReader, parseExact } from './reader.js';
import { TpmWriter } from './writer.js';

export interface TpmsClockInfo {
  /** Milliseconds the TPM has been powered since it was made, never going back except by TPM2_ClockSet forwards. */
  readonly clock: bigint;
  /** TPM resets (power cycles without orderly shutdown/resume). */
  readonly resetCount: number;
  /** TPM restarts/resumes since the last reset. */
  readonly restartCount: number;
  readonly safe: boolean;
}

export interface TpmsQuoteInfo {
  readonly pcrSelect: TpmlPcrSelection;
  readonly pcrDigest: Buffer;
}

export interface TpmsCertifyInfo {
  readonly name: Buffer;
  readonly qualifiedName: Buffer;
}

export interface TpmsCreationInfo {
  readonly objectName: Buffer;
  readonly creationHash: Buffer;
}

interface AttestCommon {
  /** TPM_GENERATED_VALUE when the TPM made it. */
  readonly magic: number;
  readonly qualifiedSigner: Buffer;
  readonly extraData: Buffer;
  readonly clockInfo: TpmsClockInfo;
  readonly firmwareVersion: bigint;
}

export interface TpmsAttestQuote extends AttestCommon {
  readonly type: typeof TPM_ST.ATTEST_QUOTE;
  readonly attested: TpmsQuoteInfo;
}
export interface TpmsAttestCertify extends AttestCommon {
  readonly type: typeof TPM_ST.ATTEST_CERTIFY;
  readonly attested: TpmsCertifyInfo;
}
export interface TpmsAttestCreation extends AttestCommon {
  readonly type: typeof TPM_ST.ATTEST_CREATION;
  readonly attested: TpmsCreationInfo;
}

export type TpmsAttest = TpmsAttestQuote | TpmsAttestCertify | TpmsAttestCreation;

function readClockInfo(r: TpmReader): TpmsClockInfo {
  return r.within('clockInfo', () => {
    const clock = r.u64();
    const resetCount = r.u32();
    const restartCount = r.u32();
    const safeAt = r.offset;
    const safe = r.u8();
    if (safe > 1) r.fail(`safe is ${safe}, not YES or NO`, safeAt);
    return { clock, resetCount, restartCount, safe: safe === 1 };
  });
}

/** Reads a TPMS_ATTEST of type QUOTE, CERTIFY or CREATION at the cursor. */
export function readTpmsAttest(r: TpmReader): TpmsAttest {
  return r.within('TPMS_ATTEST', () => {
    const magic = r.u32();
    const typeAt = r.offset;
    const type = r.u16();
    const qualifiedSigner = r.within('qualifiedSigner', () => r.sized(MAX_NAME_SIZE));
    const extraData = r.within('extraData', () => r.sized(MAX_DATA_SIZE));
    const clockInfo = readClockInfo(r);
    const firmwareVersion = r.u64();
    const common = { magic, qualifiedSigner, extraData, clockInfo, firmwareVersion };
    switch (type) {
      case TPM_ST.ATTEST_QUOTE:
        return r.within('attested.quote', () => {
          const pcrSelect = readPcrSelection(r);
          const pcrDigest = r.within('pcrDigest', () => r.sized(MAX_DIGEST_SIZE));
          return { type, ...common, attested: { pcrSelect, pcrDigest } };
        });
      case TPM_ST.ATTEST_CERTIFY:
        return r.within('attested.certify', () => {
          const name = r.within('name', () => r.sized(MAX_NAME_SIZE));
          const qualifiedName = r.within('qualifiedName', () => r.sized(MAX_NAME_SIZE));
          return { type, ...common, attested: { name, qualifiedName } };
        });
      case TPM_ST.ATTEST_CREATION:
        return r.within('attested.creation', () => {
          const objectName = r.within('objectName', () => r.sized(MAX_NAME_SIZE));
          const creationHash = r.within('creationHash', () => r.sized(MAX_DIGEST_SIZE));
          return { type, ...common, attested: { objectName, creationHash } };
        });
      default:
        return r.fail(`attestation type ${hex16(type)} is not QUOTE, CERTIFY or CREATION`, typeAt);
    }
  });
}

/** Parses TPMS_ATTEST bytes (the contents of a TPM2B_ATTEST), refusing trailing bytes. */
export function parseTpmsAttest(bytes: Uint8Array): TpmsAttest {
  return parseExact(bytes, readTpmsAttest);
}

/** Marshals a TPMS_ATTEST; used to build test fixtures and by software signers. */
export function marshalTpmsAttest(a: TpmsAttest): Buffer {
  const w = new TpmWriter('TPMS_ATTEST', 256);
  w.u32(a.magic).u16(a.type);
  w.sized(a.qualifiedSigner, MAX_NAME_SIZE, 'qualifiedSigner').sized(a.extraData, MAX_DATA_SIZE, 'extraData');
  const c = a.clockInfo;
  w.u64(c.clock).u32(c.resetCount).u32(c.restartCount).u8(c.safe ? 1 : 0).u64(a.firmwareVersion);
  switch (a.type) {
    case TPM_ST.ATTEST_QUOTE:
      writePcrSelection(w, a.attested.pcrSelect);
      w.sized(a.attested.pcrDigest, MAX_DIGEST_SIZE, 'pcrDigest');
      break;
    case TPM_ST.ATTEST_CERTIFY:
      w.sized(a.attested.name, MAX_NAME_SIZE, 'name').sized(a.attested.qualifiedName, MAX_NAME_SIZE, 'qualifiedName');
      break;
    case TPM_ST.ATTEST_CREATION:
      w.sized(a.attested.objectName, MAX_NAME_SIZE, 'objectName').sized(a.attested.creationHash, MAX_DIGEST_SIZE, 'creationHash');
      break;
    default:
      throw new TpmMarshalError('TPMS_ATTEST', `type ${hex16((a as { type: number }).type)} is not supported`);
  }
  return w.toBuffer();
}
