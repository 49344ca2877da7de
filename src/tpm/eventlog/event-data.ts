/**
 * Typed decoding of the event data a firmware policy checks. Decoding only
 * interprets bytes; whether the data is what was measured is checked by
 * digests.ts. Malformed data of a decoded type is an EventLogParseError
 * pointing into the raw log.
 */
import { EventType } from './constants.js';
import {
  Guids,
  certificateInfo,
  derLength,
  formatGuid,
  parseGptEvent,
  parseImageLoadEvent,
  parseSignatureLists,
  parseUefiVariableData,
  utf16,
  type CertificateInfo,
  type GptEvent,
  type ImageLoadEvent,
  type SignatureEntry,
  type UefiVariableData,
} from './efi.js';
import { EventLogParseError } from './errors.js';
import { isStartupLocalityEvent, type TcgEvent } from './parse.js';
import { ByteReader } from './reader.js';

/** Which well-known variable a UEFI_VARIABLE_DATA names (GUID and name both matched). */
export type KnownVariable = 'SecureBoot' | 'PK' | 'KEK' | 'db' | 'dbx' | 'MokList' | 'MokListX' | 'SbatLevel' | 'Shim' | 'MokListTrusted';

export type IplSource =
  /** grub: a command it ran, `grub_cmd: …` (PCR 8). */
  | 'grub-cmd'
  /** grub: the kernel command line, `kernel_cmdline: …` / `grub_kernel_cmdline …` (PCR 8). */
  | 'grub-kernel-cmdline'
  /** grub: a file it loaded (PCR 9); the digest is of the file, not of this text. */
  | 'grub-file'
  /** UTF-16 text, as systemd-boot/systemd-stub log the kernel command line (PCR 12, formerly 8). */
  | 'utf16-text'
  | 'text'
  | 'binary';

export type AuthorityQuirk =
  /**
   * shim logs the certificates it verifies with (its built-in "Shim" vendor
   * cert, MokList entries, db) as the bare DER, without the EFI_SIGNATURE_DATA
   * owner GUID, followed by a few bytes of structure padding
   * (go-attestation issue 157). Versions before rhboot/shim 8a27a480 also put
   * one stray byte at the end that the digest does not cover.
   */
  'shim-missing-owner';

export type DecodedEvent =
  | {
      readonly kind: 'uefi-variable';
      readonly variable: UefiVariableData;
      readonly known: KnownVariable | undefined;
      /** SecureBoot only: data 0x01 → true; 0x00 or empty (variable absent) → false. */
      readonly secureBoot?: boolean;
      /** PK, KEK, db, dbx, MokList, MokListX: the EFI_SIGNATURE_LISTs. */
      readonly signatures?: readonly SignatureEntry[];
    }
  | {
      readonly kind: 'variable-authority';
      readonly variable: UefiVariableData;
      readonly known: KnownVariable | undefined;
      /** The EFI_SIGNATURE_DATA that authorized an image: owner and certificate or hash. */
      readonly owner: string | undefined;
      readonly certificate: CertificateInfo | undefined;
      readonly hash: string | undefined;
      /** SbatLevel: the SBAT CSV text. */
      readonly text: string | undefined;
      readonly quirk: AuthorityQuirk | undefined;
    }
  | { readonly kind: 'separator'; readonly value: number; readonly error: boolean }
  | { readonly kind: 'action'; readonly text: string }
  | { readonly kind: 'ipl'; readonly source: IplSource; readonly text: string }
  | { readonly kind: 'image-load'; readonly image: ImageLoadEvent }
  | { readonly kind: 'gpt'; readonly gpt: GptEvent }
  | { readonly kind: 'post-code'; readonly text: string | undefined; readonly blob: FirmwareBlob | undefined }
  | { readonly kind: 's-crtm-version'; readonly text: string }
  | { readonly kind: 'firmware-blob'; readonly blob: FirmwareBlob; readonly description: string | undefined }
  | { readonly kind: 'no-action'; readonly signature: string | undefined; readonly startupLocality: number | undefined }
  | { readonly kind: 'other' };

export interface FirmwareBlob {
  readonly base: bigint;
  readonly length: bigint;
}

const KNOWN_VARIABLES: ReadonlyArray<readonly [string, string, KnownVariable]> = [
  [Guids.EFI_GLOBAL_VARIABLE, 'SecureBoot', 'SecureBoot'],
  [Guids.EFI_GLOBAL_VARIABLE, 'PK', 'PK'],
  [Guids.EFI_GLOBAL_VARIABLE, 'KEK', 'KEK'],
  [Guids.EFI_IMAGE_SECURITY_DATABASE, 'db', 'db'],
  [Guids.EFI_IMAGE_SECURITY_DATABASE, 'dbx', 'dbx'],
  [Guids.SHIM_LOCK, 'MokList', 'MokList'],
  [Guids.SHIM_LOCK, 'MokListX', 'MokListX'],
  [Guids.SHIM_LOCK, 'SbatLevel', 'SbatLevel'],
  [Guids.SHIM_LOCK, 'Shim', 'Shim'],
  [Guids.SHIM_LOCK, 'MokListTrusted', 'MokListTrusted'],
];

/** A variable is only "db" if both its GUID and its name say so: a "db" under another vendor GUID is not the Secure Boot db. */
export function knownVariable(v: UefiVariableData): KnownVariable | undefined {
  return KNOWN_VARIABLES.find(([g, n]) => g === v.variableGuid && n === v.name)?.[2];
}

const SIGNATURE_LIST_VARIABLES: ReadonlySet<KnownVariable> = new Set(['PK', 'KEK', 'db', 'dbx', 'MokList', 'MokListX']);

const IPL_PREFIXES: ReadonlyArray<readonly [string, IplSource]> = [
  ['grub_cmd: ', 'grub-cmd'],
  // RHEL 8's grub: no colon.
  ['grub_cmd ', 'grub-cmd'],
  ['kernel_cmdline: ', 'grub-kernel-cmdline'],
  ['grub_kernel_cmdline ', 'grub-kernel-cmdline'],
];

/** Text of an ASCII/UTF-8 event, without trailing NULs. */
function text(b: Buffer): string {
  return b.toString('utf8').replace(/\0+$/, '');
}

/**
 * UTF-16LE text as systemd-boot logs it: ASCII characters with zero high
 * bytes. Old systemd-boot logged one byte short (an odd length, the last NUL
 * byte missing), so an odd final byte is allowed.
 */
function looksUtf16(b: Buffer): boolean {
  if (b.length < 2 || b[0] === 0) return false;
  for (let i = 1; i < b.length; i += 2) if (b[i] !== 0) return false;
  return b.length % 2 === 0 || b[b.length - 1] === 0;
}

function isPrintable(b: Buffer): boolean {
  const t = b.toString('utf8').replace(/\0+$/, '');
  return t.length > 0 && !t.includes('\0') && !t.includes('\ufffd');
}

/** The prefix grub puts before the measured text, if any. */
export function iplPrefix(data: Buffer): readonly [string, IplSource] | undefined {
  return IPL_PREFIXES.find(([p]) => data.length >= p.length && data.subarray(0, p.length).toString('latin1') === p);
}

function decodeIpl(e: TcgEvent): DecodedEvent {
  const pre = iplPrefix(e.data);
  if (pre) return { kind: 'ipl', source: pre[1], text: text(e.data.subarray(pre[0].length)) };
  if (looksUtf16(e.data)) return { kind: 'ipl', source: 'utf16-text', text: utf16(e.data) };
  if (!isPrintable(e.data)) return { kind: 'ipl', source: 'binary', text: '' };
  const t = text(e.data);
  if (e.pcrIndex === 9 && (t.startsWith('/') || t.startsWith('('))) return { kind: 'ipl', source: 'grub-file', text: t };
  return { kind: 'ipl', source: 'text', text: t };
}

function decodeVariable(e: TcgEvent): DecodedEvent {
  const variable = parseUefiVariableData(e.data, e.dataOffset);
  if (variable.trailing.length > 0) {
    throw new EventLogParseError(e.dataOffset + e.data.length - variable.trailing.length, `${variable.trailing.length} bytes after VariableData`);
  }
  const known = knownVariable(variable);
  if (known === 'SecureBoot') {
    if (variable.data.length > 1) throw new EventLogParseError(variable.dataOffset, `SecureBoot variable is ${variable.data.length} bytes`);
    return { kind: 'uefi-variable', variable, known, secureBoot: variable.data[0] === 1 };
  }
  if (known && SIGNATURE_LIST_VARIABLES.has(known)) {
    return { kind: 'uefi-variable', variable, known, signatures: parseSignatureLists(variable.data, variable.dataOffset) };
  }
  return { kind: 'uefi-variable', variable, known };
}

function decodeAuthority(e: TcgEvent): DecodedEvent {
  const variable = parseUefiVariableData(e.data, e.dataOffset);
  const known = knownVariable(variable);
  const base = { kind: 'variable-authority' as const, variable, known };
  const none = { owner: undefined, certificate: undefined, hash: undefined, text: undefined, quirk: undefined };
  const d = variable.data;
  if (known === 'SbatLevel') {
    if (variable.trailing.length > 0) throw new EventLogParseError(e.offset, 'bytes after SbatLevel data');
    return { ...base, ...none, text: text(d) };
  }
  const inner = d.subarray(16);
  if (variable.trailing.length === 0 && d.length > 16 && derLength(inner) === inner.length) {
    return { ...base, ...none, owner: formatGuid(d.subarray(0, 16)), certificate: certificateInfo(inner) };
  }
  if (variable.trailing.length === 0 && d.length === 48) {
    return { ...base, ...none, owner: formatGuid(d.subarray(0, 16)), hash: inner.toString('hex') };
  }
  // shim: bare DER, no owner GUID, then up to SHIM_MAX_PADDING bytes of padding.
  const len = derLength(d);
  if (len !== undefined && len === d.length && variable.trailing.length <= SHIM_MAX_PADDING) {
    return { ...base, ...none, certificate: certificateInfo(d), quirk: 'shim-missing-owner' };
  }
  if (variable.trailing.length > 0) {
    throw new EventLogParseError(variable.dataOffset + d.length, `${variable.trailing.length} bytes after VariableData`);
  }
  // Other shim authorities (MokListTrusted's one byte, …) carry opaque data.
  return { ...base, ...none };
}

/** Seen in real logs: 6 (5 zero bytes and the stray byte). */
const SHIM_MAX_PADDING = 8;

function decodeBlob(e: TcgEvent): FirmwareBlob {
  const r = new ByteReader(e.data, e.dataOffset);
  const blob = { base: r.u64Big('BlobBase'), length: r.u64Big('BlobLength') };
  if (r.remaining !== 0) r.fail('bytes after UEFI_PLATFORM_FIRMWARE_BLOB');
  return blob;
}

/** Decodes the data of `e` by its event type. Types this module does not interpret decode to `{ kind: 'other' }`. */
export function decodeEventData(e: TcgEvent): DecodedEvent {
  switch (e.eventType) {
    case EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
    case EventType.EV_EFI_VARIABLE_BOOT:
    case EventType.EV_EFI_VARIABLE_BOOT2:
      return decodeVariable(e);
    case EventType.EV_EFI_VARIABLE_AUTHORITY:
      return decodeAuthority(e);
    case EventType.EV_SEPARATOR: {
      if (e.data.length !== 4) throw new EventLogParseError(e.dataOffset, `separator data is ${e.data.length} bytes, expected 4`);
      const value = e.data.readUInt32LE(0);
      // PFP: 0 is the normal separator and 1 signals an error (0xFFFFFFFF in the
      // legacy BIOS spec). Windows puts "WBCL" (0x4c434257) in PCRs 12–14: not an error.
      return { kind: 'separator', value, error: value === 1 || value === 0xffffffff };
    }
    case EventType.EV_EFI_ACTION:
    case EventType.EV_ACTION:
      return { kind: 'action', text: text(e.data) };
    case EventType.EV_IPL:
      return decodeIpl(e);
    case EventType.EV_EFI_BOOT_SERVICES_APPLICATION:
    case EventType.EV_EFI_BOOT_SERVICES_DRIVER:
    case EventType.EV_EFI_RUNTIME_SERVICES_DRIVER:
      return { kind: 'image-load', image: parseImageLoadEvent(e.data, e.dataOffset) };
    case EventType.EV_EFI_GPT_EVENT:
    case EventType.EV_EFI_GPT_EVENT2:
      return { kind: 'gpt', gpt: parseGptEvent(e.data, e.dataOffset) };
    case EventType.EV_POST_CODE:
      // Either a UEFI_PLATFORM_FIRMWARE_BLOB (16 bytes) or an ASCII label such as "POST CODE".
      if (e.data.length === 16 && !isPrintable(e.data)) return { kind: 'post-code', text: undefined, blob: decodeBlob(e) };
      return { kind: 'post-code', text: text(e.data), blob: undefined };
    case EventType.EV_S_CRTM_VERSION:
      return { kind: 's-crtm-version', text: looksUtf16(e.data) ? utf16(e.data) : e.data.toString('hex') };
    case EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB:
      return { kind: 'firmware-blob', blob: decodeBlob(e), description: undefined };
    case EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: {
      const r = new ByteReader(e.data, e.dataOffset);
      const description = r.bytes(r.u8('BlobDescriptionSize'), 'BlobDescription').toString('latin1');
      const blob = { base: r.u64Big('BlobBase'), length: r.u64Big('BlobLength') };
      if (r.remaining !== 0) r.fail('bytes after UEFI_PLATFORM_FIRMWARE_BLOB2');
      return { kind: 'firmware-blob', blob, description };
    }
    case EventType.EV_NO_ACTION: {
      const sig = e.data.length >= 16 ? e.data.subarray(0, 16).toString('latin1') : undefined;
      const signature = sig && /^[\x20-\x7e]+\0*$/.test(sig) ? sig.replace(/\0+$/, '') : undefined;
      const startupLocality = isStartupLocalityEvent(e) ? e.data[16] : undefined;
      return { kind: 'no-action', signature, startupLocality };
    }
    default:
      return { kind: 'other' };
  }
}
