/**
 * Typed errors of src/hsm. Token faults carry the CKR name in `code`; none of
 * them ever carries a PIN (the PIN is never an argument of anything that builds
 * a message).
 */
import pkcs11js from 'pkcs11js';

const ckrNames = new Map<number, string>();
for (const [name, value] of Object.entries(pkcs11js)) {
  if (name.startsWith('CKR_') && typeof value === 'number' && !ckrNames.has(value)) ckrNames.set(value, name);
}

/** The CKR_* name of a PKCS#11 return value (`CKR_0x…` for unknown vendor codes). */
export function ckrName(rv: number): string {
  return ckrNames.get(rv) ?? `CKR_0x${rv.toString(16).padStart(8, '0')}`;
}

/** A PKCS#11 call failed; `code` is the CKR name, `operation` the C_ function. */
export class Pkcs11Error extends Error {
  override name = 'Pkcs11Error';
  constructor(
    readonly code: string,
    readonly operation: string,
    detail?: string,
    options?: { cause?: unknown },
  ) {
    super(`${operation} failed with ${code}${detail ? `: ${detail}` : ''}`, options);
  }
}

/** The session was closed or its handle is no longer valid (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED). */
export class HsmSessionError extends Pkcs11Error {
  override name = 'HsmSessionError';
}

/** The token or device is gone (CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_ERROR, or the configured token is no longer listed). */
export class HsmTokenNotPresentError extends Pkcs11Error {
  override name = 'HsmTokenNotPresentError';
}

/** The application is not logged in to the token (CKR_USER_NOT_LOGGED_IN). */
export class HsmNotLoggedInError extends Pkcs11Error {
  override name = 'HsmNotLoggedInError';
}

/** The token refused the PIN (CKR_PIN_INCORRECT). keel stops logging in after this, so as not to lock the token. */
export class HsmPinIncorrectError extends Pkcs11Error {
  override name = 'HsmPinIncorrectError';
}

/** The token locked the user PIN (CKR_PIN_LOCKED, CKR_PIN_EXPIRED). */
export class HsmPinLockedError extends Pkcs11Error {
  override name = 'HsmPinLockedError';
}

/** The key object is gone from the token (CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID, or not found again). */
export class HsmKeyNotFoundError extends Pkcs11Error {
  override name = 'HsmKeyNotFoundError';
}

const byCode: Record<string, new (code: string, op: string, detail?: string, o?: { cause?: unknown }) => Pkcs11Error> = {
  CKR_SESSION_HANDLE_INVALID: HsmSessionError,
  CKR_SESSION_CLOSED: HsmSessionError,
  CKR_DEVICE_REMOVED: HsmTokenNotPresentError,
  CKR_TOKEN_NOT_PRESENT: HsmTokenNotPresentError,
  CKR_TOKEN_NOT_RECOGNIZED: HsmTokenNotPresentError,
  CKR_DEVICE_ERROR: HsmTokenNotPresentError,
  CKR_SLOT_ID_INVALID: HsmTokenNotPresentError,
  CKR_USER_NOT_LOGGED_IN: HsmNotLoggedInError,
  CKR_PIN_INCORRECT: HsmPinIncorrectError,
  CKR_PIN_LOCKED: HsmPinLockedError,
  CKR_PIN_EXPIRED: HsmPinLockedError,
  CKR_OBJECT_HANDLE_INVALID: HsmKeyNotFoundError,
  CKR_KEY_HANDLE_INVALID: HsmKeyNotFoundError,
};

/**
 * Turns whatever pkcs11js threw into a typed error. pkcs11js reports CKR
 * failures as `{ message: 'CKR_…', code: number }`; anything else (a
 * TypeError from bad arguments) becomes a Pkcs11Error with code `NATIVE`.
 */
export function toPkcs11Error(e: unknown, operation: string, detail?: string): Pkcs11Error {
  if (e instanceof Pkcs11Error) return e;
  const rv = typeof e === 'object' && e !== null && typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : undefined;
  const msg = e instanceof Error ? e.message : '';
  const code = rv !== undefined && rv !== 0 ? ckrName(rv) : /^CKR_[A-Z0-9_]+$/.test(msg) ? msg : 'NATIVE';
  const Ctor = byCode[code] ?? Pkcs11Error;
  return new Ctor(code, operation, detail ?? (code === 'NATIVE' ? msg : undefined), { cause: e });
}

/** Configuration that cannot work (bad token selector, bad pool size, missing module). */
export class HsmConfigError extends Error {
  override name = 'HsmConfigError';
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`invalid HSM configuration at ${path}: ${reason}`);
  }
}

/** The PIN source could not be read (missing variable, unreadable or empty file). Never contains the PIN. */
export class PinSourceError extends Error {
  override name = 'PinSourceError';
}

/** All sessions are busy and the waiting queue is full. */
export class HsmBusyError extends Error {
  override name = 'HsmBusyError';
  constructor(readonly queued: number) {
    super(`all HSM sessions are busy and ${queued} operations are already waiting (queue full)`);
  }
}

/** The Hsm was closed; no more operations. */
export class HsmClosedError extends Error {
  override name = 'HsmClosedError';
  constructor() {
    super('the HSM connection is closed');
  }
}

/** A key with this label or id already exists on the token. */
export class HsmKeyExistsError extends Error {
  override name = 'HsmKeyExistsError';
}

/** The key on the token is of a type or size keel does not sign with, or a lookup matched several keys. */
export class HsmUnsupportedKeyError extends Error {
  override name = 'HsmUnsupportedKeyError';
}

/** The signature algorithm does not fit the key, or the token lacks every mechanism that could do it. */
export class HsmAlgorithmError extends Error {
  override name = 'HsmAlgorithmError';
}
