/**
 * Decoding of TSS2_RC response codes: which layer of the stack answered
 * (the TPM itself, ESAPI, the TCTI, ...), and for TPM codes the format-0 /
 * format-1 fields (error number, which handle, parameter or session).
 * Pure: any 32-bit number decodes, nothing throws.
 */

export type RcLayer =
  | 'tpm'
  | 'fapi'
  | 'esapi'
  | 'sys'
  | 'mu'
  | 'tcti'
  | 'resmgr'
  | 'resmgr-tpm'
  | 'unknown';

export interface DecodedRc {
  readonly rc: number;
  readonly layer: RcLayer;
  /** 'format-1' and 'format-0' are TPM codes; 'tss' is a TSS library code (base error). */
  readonly format: 'format-0' | 'format-1' | 'tss' | 'success';
  /** Symbolic name, e.g. TPM_RC_HANDLE, TPM_RC_OBJECT_MEMORY, TSS2_BASE_RC_IO_ERROR. */
  readonly name: string;
  /** The error number within its format (format-1: 6 bits; format-0: 7 bits; tss: 16 bits). */
  readonly errorNumber: number;
  /** Format-0: the S bit, a warning (retry may succeed, e.g. out of memory for objects). */
  readonly warning: boolean;
  /** Format-0: the T bit, a vendor-defined code. */
  readonly vendor: boolean;
  /** Format-1: which handle (1..7), parameter (1..15) or session (1..7) the code is about. */
  readonly handle?: number;
  readonly parameter?: number;
  readonly session?: number;
  /** One line for people: name, meaning, and the index. */
  readonly text: string;
}

const LAYERS: Record<number, RcLayer> = {
  0: 'tpm',
  6: 'fapi',
  7: 'esapi',
  8: 'sys',
  9: 'mu',
  10: 'tcti',
  11: 'resmgr',
  12: 'resmgr-tpm',
};

// TPM 2.0 Part 2, table "TPM_RC": format-1 codes (RC_FMT1 + n).
const FMT1: Record<number, [string, string]> = {
  0x01: ['ASYMMETRIC', 'asymmetric algorithm not supported or not correct'],
  0x02: ['ATTRIBUTES', 'inconsistent attributes'],
  0x03: ['HASH', 'hash algorithm not supported or not appropriate'],
  0x04: ['VALUE', 'value is out of range or is not correct for the context'],
  0x05: ['HIERARCHY', 'hierarchy is not enabled or is not correct for the use'],
  0x07: ['KEY_SIZE', 'key size is not supported'],
  0x08: ['MGF', 'mask generation function not supported'],
  0x09: ['MODE', 'mode of operation not supported'],
  0x0a: ['TYPE', 'the type of the value is not appropriate for the use'],
  0x0b: ['HANDLE', 'the handle is not correct for the use'],
  0x0c: ['KDF', 'unsupported key derivation function or function not appropriate for use'],
  0x0d: ['RANGE', 'value was out of allowed range'],
  0x0e: ['AUTH_FAIL', 'the authorization HMAC check failed and DA counter incremented'],
  0x0f: ['NONCE', 'invalid nonce size or nonce value mismatch'],
  0x10: ['PP', 'authorization requires assertion of PP'],
  0x12: ['SCHEME', 'unsupported or incompatible scheme'],
  0x15: ['SIZE', 'structure is the wrong size'],
  0x16: ['SYMMETRIC', 'unsupported symmetric algorithm or key size, or not appropriate for instance'],
  0x17: ['TAG', 'incorrect structure tag'],
  0x18: ['SELECTOR', 'union selector is incorrect'],
  0x1a: ['INSUFFICIENT', 'the TPM was unable to unmarshal a value because there were not enough octets in the input buffer'],
  0x1b: ['SIGNATURE', 'the signature is not valid'],
  0x1c: ['KEY', 'key fields are not compatible with the selected use'],
  0x1d: ['POLICY_FAIL', 'a policy check failed'],
  0x1f: ['INTEGRITY', 'integrity check failed'],
  0x20: ['TICKET', 'invalid ticket'],
  0x21: ['RESERVED_BITS', 'reserved bits not set to zero as required'],
  0x22: ['BAD_AUTH', 'authorization failure without DA implications'],
  0x23: ['EXPIRED', 'the policy has expired'],
  0x24: ['POLICY_CC', 'the commandCode in the policy is not the commandCode of the command or the command code in a policy command references a command that is not implemented'],
  0x25: ['BINDING', 'public and sensitive portions of an object are not cryptographically bound'],
  0x26: ['CURVE', 'curve not supported'],
  0x27: ['ECC_POINT', 'point is not on the required curve'],
};

// Format-0, TPM 2.0 errors (RC_VER1 + n).
const VER1: Record<number, [string, string]> = {
  0x00: ['INITIALIZE', 'TPM not initialized by TPM2_Startup or already initialized'],
  0x01: ['FAILURE', 'commands not being accepted because of a TPM failure'],
  0x03: ['SEQUENCE', 'improper use of a sequence handle'],
  0x0b: ['PRIVATE', 'not currently used'],
  0x19: ['HMAC', 'not currently used'],
  0x20: ['DISABLED', 'the command is disabled'],
  0x21: ['EXCLUSIVE', 'command failed because audit sequence required exclusivity'],
  0x24: ['AUTH_TYPE', 'authorization handle is not correct for command'],
  0x25: ['AUTH_MISSING', 'command requires an authorization session for handle and it is not present'],
  0x26: ['POLICY', 'policy failure in math operation or an invalid authPolicy value'],
  0x27: ['PCR', 'PCR check fail'],
  0x28: ['PCR_CHANGED', 'PCR have changed since checked'],
  0x2d: ['UPGRADE', 'the TPM is in field upgrade mode'],
  0x2e: ['TOO_MANY_CONTEXTS', 'context ID counter is at maximum'],
  0x2f: ['AUTH_UNAVAILABLE', 'authValue or authPolicy is not available for selected entity'],
  0x30: ['REBOOT', 'a _TPM_Init and Startup(CLEAR) is required before the TPM can resume operation'],
  0x31: ['UNBALANCED', 'the protection algorithms (hash and symmetric) are not reasonably balanced'],
  0x42: ['COMMAND_SIZE', 'command commandSize value is inconsistent with contents of the command buffer'],
  0x43: ['COMMAND_CODE', 'command code not supported'],
  0x44: ['AUTHSIZE', 'the value of authorizationSize is out of range or the number of octets in the Authorization Area is greater than required'],
  0x45: ['AUTH_CONTEXT', 'use of an authorization session with a context command or another command that cannot have an authorization session'],
  0x46: ['NV_RANGE', 'NV offset+size is out of range'],
  0x47: ['NV_SIZE', 'requested allocation size is larger than allowed'],
  0x48: ['NV_LOCKED', 'NV access locked'],
  0x49: ['NV_AUTHORIZATION', 'NV access authorization fails in command actions'],
  0x4a: ['NV_UNINITIALIZED', 'an NV Index is used before being initialized or the state saved by TPM2_Shutdown(STATE) could not be restored'],
  0x4b: ['NV_SPACE', 'insufficient space for NV allocation'],
  0x4c: ['NV_DEFINED', 'NV Index or persistent object already defined'],
  0x50: ['BAD_CONTEXT', 'context in TPM2_ContextLoad() is not valid'],
  0x51: ['CPHASH', 'cpHash value already set or not correct for use'],
  0x52: ['PARENT', 'handle for parent is not a valid parent'],
  0x53: ['NEEDS_TEST', 'some function needs testing'],
  0x54: ['NO_RESULT', 'an internal function cannot process a request due to an unspecified problem'],
  0x55: ['SENSITIVE', 'the sensitive area did not unmarshal correctly after decryption'],
};

// Format-0 warnings (RC_WARN + n).
const WARN: Record<number, [string, string]> = {
  0x01: ['CONTEXT_GAP', 'gap for context ID is too large'],
  0x02: ['OBJECT_MEMORY', 'out of memory for object contexts'],
  0x03: ['SESSION_MEMORY', 'out of memory for session contexts'],
  0x04: ['MEMORY', 'out of shared object/session memory or need space for internal operations'],
  0x05: ['SESSION_HANDLES', 'out of session handles; a session must be flushed before a new session may be created'],
  0x06: ['OBJECT_HANDLES', 'out of object handles'],
  0x07: ['LOCALITY', 'bad locality'],
  0x08: ['YIELDED', 'the TPM has suspended operation on the command'],
  0x09: ['CANCELED', 'the command was canceled'],
  0x0a: ['TESTING', 'TPM is performing self-tests'],
  0x20: ['NV_RATE', 'the TPM is rate-limiting accesses to prevent wearout of NV'],
  0x21: ['LOCKOUT', 'authorizations for objects subject to DA protection are not allowed at this time because the TPM is in DA lockout mode'],
  0x22: ['RETRY', 'the TPM was not able to start the command'],
  0x23: ['NV_UNAVAILABLE', 'the command may require writing of NV and NV is not current accessible'],
};
for (let i = 0; i <= 6; i++) {
  WARN[0x10 + i] = [`REFERENCE_H${i}`, `handle ${i + 1} of the handle area references a transient object or session that is not loaded`];
  WARN[0x18 + i] = [`REFERENCE_S${i}`, `authorization session ${i + 1} references a session that is not loaded`];
}

// tss2_common.h TSS2_BASE_RC_* (library layers).
const BASE: Record<number, string> = {
  1: 'GENERAL_FAILURE', 2: 'NOT_IMPLEMENTED', 3: 'BAD_CONTEXT', 4: 'ABI_MISMATCH', 5: 'BAD_REFERENCE',
  6: 'INSUFFICIENT_BUFFER', 7: 'BAD_SEQUENCE', 8: 'NO_CONNECTION', 9: 'TRY_AGAIN', 10: 'IO_ERROR',
  11: 'BAD_VALUE', 12: 'NOT_PERMITTED', 13: 'INVALID_SESSIONS', 14: 'NO_DECRYPT_PARAM', 15: 'NO_ENCRYPT_PARAM',
  16: 'BAD_SIZE', 17: 'MALFORMED_RESPONSE', 18: 'INSUFFICIENT_CONTEXT', 19: 'INSUFFICIENT_RESPONSE',
  20: 'INCOMPATIBLE_TCTI', 21: 'NOT_SUPPORTED', 22: 'BAD_TCTI_STRUCTURE', 23: 'MEMORY', 24: 'BAD_TR',
  25: 'MULTIPLE_DECRYPT_SESSIONS', 26: 'MULTIPLE_ENCRYPT_SESSIONS', 27: 'RSP_AUTH_FAILED', 28: 'NO_CONFIG',
  29: 'BAD_PATH', 30: 'NOT_DELETABLE', 31: 'PATH_ALREADY_EXISTS', 32: 'KEY_NOT_FOUND',
  33: 'SIGNATURE_VERIFICATION_FAILED', 34: 'HASH_MISMATCH', 35: 'KEY_NOT_DUPLICABLE', 36: 'PATH_NOT_FOUND',
  37: 'NO_CERT', 38: 'NO_PCR', 39: 'PCR_NOT_RESETTABLE', 40: 'BAD_TEMPLATE', 41: 'AUTHORIZATION_FAILED',
  42: 'AUTHORIZATION_UNKNOWN', 43: 'NV_NOT_READABLE', 44: 'NV_TOO_SMALL', 45: 'NV_NOT_WRITEABLE',
  46: 'POLICY_UNKNOWN', 47: 'NV_WRONG_TYPE', 48: 'NAME_ALREADY_EXISTS', 49: 'NO_TPM', 50: 'BAD_KEY',
  51: 'NO_HANDLE', 52: 'NOT_PROVISIONED', 53: 'ALREADY_PROVISIONED',
};

const hex = (n: number, w: number): string => '0x' + n.toString(16).padStart(w, '0');

function decodeTpmCode(rc: number, layer: RcLayer): DecodedRc {
  const code = rc & 0xffff;
  if (code & 0x80) {
    // Format 1: error about a handle, parameter or session.
    const n = code & 0x3f;
    const idx = (code >> 8) & 0xf;
    const [short, meaning] = FMT1[n] ?? [`UNKNOWN_FMT1_${hex(n, 2)}`, 'unknown format-1 error'];
    const base = { rc, layer, format: 'format-1' as const, name: `TPM_RC_${short}`, errorNumber: n, warning: false, vendor: false };
    let where = '';
    let extra: Pick<DecodedRc, 'handle' | 'parameter' | 'session'> = {};
    if (code & 0x40) {
      extra = { parameter: idx };
      where = ` (parameter ${idx})`;
    } else if (idx & 0x8) {
      extra = { session: idx & 0x7 };
      where = ` (session ${idx & 0x7})`;
    } else if (idx !== 0) {
      extra = { handle: idx };
      where = ` (handle ${idx})`;
    }
    return { ...base, ...extra, text: `TPM_RC_${short}: ${meaning}${where}` };
  }
  // Format 0.
  const n = code & 0x7f;
  const warning = (code & 0x800) !== 0;
  const vendor = (code & 0x400) !== 0;
  const ver1 = (code & 0x100) !== 0;
  let entry: [string, string] | undefined;
  if (vendor) entry = [`VENDOR_${hex(n, 2)}`, 'vendor-defined error'];
  else if (!ver1) entry = [`TPM12_${hex(n, 2)}`, 'TPM 1.2 response code'];
  else entry = (warning ? WARN : VER1)[n];
  const [short, meaning] = entry ?? [`UNKNOWN_FMT0_${hex(n, 2)}`, warning ? 'unknown warning' : 'unknown error'];
  return {
    rc, layer, format: 'format-0', name: `TPM_RC_${short}`, errorNumber: n, warning, vendor,
    text: `TPM_RC_${short}: ${meaning}`,
  };
}

/** Decodes a TSS2_RC (a TPM response code, possibly with a TSS layer in bits 16..23). */
export function decodeRc(rcIn: number): DecodedRc {
  const rc = rcIn >>> 0;
  const layerNo = (rc >>> 16) & 0xff;
  const layer = LAYERS[layerNo] ?? 'unknown';
  if (rc === 0) {
    return { rc, layer: 'tpm', format: 'success', name: 'TPM_RC_SUCCESS', errorNumber: 0, warning: false, vendor: false, text: 'success' };
  }
  if (layer === 'tpm' || layer === 'resmgr-tpm') {
    const d = decodeTpmCode(rc, layer);
    return layer === 'tpm' ? d : { ...d, text: `resource manager (TPM code): ${d.text}` };
  }
  const n = rc & 0xffff;
  const short = BASE[n] ?? `UNKNOWN_${hex(n, 4)}`;
  return {
    rc, layer, format: 'tss', name: `TSS2_BASE_RC_${short}`, errorNumber: n, warning: false, vendor: false,
    text: `${layer} layer: TSS2_BASE_RC_${short}`,
  };
}

/** rc as the usual 0x-prefixed hex string (8 digits when a layer is set, else 3). */
export function formatRc(rc: number): string {
  const r = rc >>> 0;
  return r > 0xffff ? hex(r, 8) : hex(r, 3);
}
