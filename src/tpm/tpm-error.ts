/**
 * Typed errors of the TPM device layer (src/tpm/device.ts). Every failure of
 * a TpmDevice call is one of these; `instanceof TpmDeviceError` catches all.
 */
import { decodeRc, formatRc, type DecodedRc } from './rc.js';

/** Base class of every TpmDevice failure. */
export class TpmDeviceError extends Error {
  override name = 'TpmDeviceError';
}

/** The TPM, or a TSS layer on the way to it, answered with a response code. */
export class TpmError extends TpmDeviceError {
  override name = 'TpmError';
  /** The TSS2_RC as returned by tpm2-tss (TPM codes have layer 0). */
  readonly rc: number;
  /** The command or TSS call that failed, e.g. "TPM2_Quote". */
  readonly command: string;
  /** tpm2-tss's own decoding (Tss2_RC_Decode), e.g. "tpm:warn(2.0): out of memory for object contexts". */
  readonly rcText: string;
  /** keel's decoding: layer, format, error number, handle/parameter/session index. */
  readonly decoded: DecodedRc;

  constructor(command: string, rc: number, rcText: string, message?: string) {
    const decoded = decodeRc(rc);
    super(message ?? `${command} failed with ${formatRc(rc)}: ${rcText || decoded.text}`);
    this.rc = rc >>> 0;
    this.command = command;
    this.rcText = rcText || decoded.text;
    this.decoded = decoded;
  }
}

/** The TCTI could not be loaded or could not reach a TPM (nothing listening, no device node). */
export class TpmConnectionError extends TpmDeviceError {
  override name = 'TpmConnectionError';
  readonly tcti: string;
  /** The TSS2_RC of the failing call, when there is one. */
  readonly rc: number;
  /**
   * The connection of an open device broke (the TPM went away, or ESYS lost
   * track of it): the device reopens it on a later call, after backoff.
   */
  readonly lost: boolean;
  /** How long until the device tries to reconnect, when it is waiting to. */
  readonly retryInMs: number | undefined;

  constructor(tcti: string, rc: number, message: string, o: { lost?: boolean; retryInMs?: number } = {}) {
    super(message);
    this.tcti = tcti;
    this.rc = rc >>> 0;
    this.lost = o.lost ?? false;
    this.retryInMs = o.retryInMs;
  }
}

/** The device was closed (close() was called, or opening failed). */
export class TpmDeviceClosedError extends TpmDeviceError {
  override name = 'TpmDeviceClosedError';
}

/** An argument was invalid: the message names which and why. No TPM command was sent. */
export class TpmArgumentError extends TpmDeviceError {
  override name = 'TpmArgumentError';
}

/** An AkHandle that was flushed, or that belongs to another TpmDevice. */
export class TpmStaleHandleError extends TpmDeviceError {
  override name = 'TpmStaleHandleError';
}

/** An object is missing or is not what was asked for (e.g. no AK at a persistent handle). */
export class TpmObjectError extends TpmDeviceError {
  override name = 'TpmObjectError';
}

/** Shape of a rejection coming from the native addon. */
interface NativeFailure {
  message: string;
  kind?: string;
  command?: string;
  rc?: number;
  rcText?: string;
  tcti?: string;
  broken?: boolean;
}

/** Whether a rejection of the addon left the device's connection broken. */
export function brokeConnection(e: unknown): boolean {
  return e instanceof Error && (e as Error & NativeFailure).broken === true;
}

/** Turns whatever the addon threw or rejected with into one of the typed errors above. */
export function fromNative(e: unknown): TpmDeviceError {
  if (e instanceof TpmDeviceError) return e;
  if (!(e instanceof Error)) return new TpmDeviceError(String(e));
  const f = e as Error & NativeFailure;
  let out: TpmDeviceError;
  switch (f.kind) {
    case 'tpm':
      out = f.rc ? new TpmError(f.command || 'TPM', f.rc, f.rcText ?? '') : new TpmDeviceError(f.message);
      break;
    case 'connection':
      out = new TpmConnectionError(f.tcti ?? '', f.rc ?? 0, f.message, { lost: f.broken === true });
      break;
    case 'closed':
      out = new TpmDeviceClosedError(f.message);
      break;
    case 'argument':
      out = new TpmArgumentError(f.message);
      break;
    case 'stale-handle':
      out = new TpmStaleHandleError(f.message);
      break;
    case 'mismatch':
      out = new TpmObjectError(f.message);
      break;
    default:
      // A TypeError from the addon's own argument checks.
      out = e instanceof TypeError ? new TpmArgumentError(e.message) : new TpmDeviceError(e.message);
  }
  return out;
}
