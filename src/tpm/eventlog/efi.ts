/**
 * UEFI structures found in event data: GUIDs, UEFI_VARIABLE_DATA,
 * EFI_SIGNATURE_LIST, device paths, UEFI_IMAGE_LOAD_EVENT, UEFI_GPT_DATA.
 * Each decoder takes the absolute offset of its input so errors point into the raw log.
 */
import { X509Certificate, createHash } from 'node:crypto';
import { ByteReader } from './reader.js';
import { signatureTypeByGuid } from './signature-types.js';

/** Formats a 16-byte EFI_GUID (first three fields little-endian) as lowercase text. */
export function formatGuid(b: Buffer): string {
  const h = b.toString('hex');
  const le = (s: string): string => s.match(/../g)!.reverse().join('');
  return `${le(h.slice(0, 8))}-${le(h.slice(8, 12))}-${le(h.slice(12, 16))}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export const Guids = {
  /** EFI_GLOBAL_VARIABLE: SecureBoot, PK, KEK, Boot####, BootOrder. */
  EFI_GLOBAL_VARIABLE: '8be4df61-93ca-11d2-aa0d-00e098032b8c',
  /** EFI_IMAGE_SECURITY_DATABASE_GUID: db, dbx, dbt, dbr. */
  EFI_IMAGE_SECURITY_DATABASE: 'd719b2cb-3d3a-4596-a3bc-dad00e67656f',
  /** shim's variables: MokList, MokListX, SbatLevel, and its built-in "Shim" authority. */
  SHIM_LOCK: '605dab50-e046-4300-abb6-3dd810dd8b23',
  EFI_CERT_X509: 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072',
  EFI_CERT_SHA256: 'c1c41626-504c-4092-aca9-41f936934328',
} as const;

/** Decodes UTF-16LE, dropping trailing NULs (and an odd last byte). */
export function utf16(b: Buffer): string {
  const even = b.length % 2 === 0 ? b : b.subarray(0, b.length - 1);
  return even.toString('utf16le').replace(/\0+$/, '');
}

export interface UefiVariableData {
  readonly variableGuid: string;
  readonly name: string;
  readonly data: Buffer;
  /** Absolute offset of `data` in the raw log. */
  readonly dataOffset: number;
  /** Bytes after VariableData that the structure does not account for. */
  readonly trailing: Buffer;
}

/** UEFI_VARIABLE_DATA: VariableName GUID, UnicodeNameLength u64, VariableDataLength u64, name (CHAR16), data. */
export function parseUefiVariableData(buf: Buffer, base: number): UefiVariableData {
  const r = new ByteReader(buf, base);
  const variableGuid = formatGuid(r.bytes(16, 'VariableName GUID'));
  const nameLen = r.u64('UnicodeNameLength', Math.floor(buf.length / 2));
  const dataLen = r.u64('VariableDataLength', buf.length);
  const name = utf16(r.bytes(nameLen * 2, 'UnicodeName'));
  const dataOffset = r.offset;
  const data = r.bytes(dataLen, 'VariableData');
  return { variableGuid, name, data, dataOffset, trailing: r.rest() };
}

export interface CertificateInfo {
  readonly der: Buffer;
  /** Lowercase hex SHA-256 of the DER. */
  readonly sha256: string;
  /** Subject and issuer as Node prints them; undefined when the DER does not parse as X.509. */
  readonly subject: string | undefined;
  readonly issuer: string | undefined;
}

export function certificateInfo(der: Buffer): CertificateInfo {
  const sha256 = createHash('sha256').update(der).digest('hex');
  try {
    const c = new X509Certificate(der);
    return { der, sha256, subject: c.subject, issuer: c.issuer };
  } catch {
    return { der, sha256, subject: undefined, issuer: undefined };
  }
}

/** Length of the DER TLV at the start of `b` (definite lengths only), or undefined. */
export function derLength(b: Buffer): number | undefined {
  if (b.length < 2 || b[0] !== 0x30) return undefined;
  const l0 = b[1]!;
  if (l0 < 0x80) return 2 + l0;
  const n = l0 & 0x7f;
  if (n === 0 || n > 4 || b.length < 2 + n) return undefined;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + b[2 + i]!;
  return 2 + n + len;
}

export type SignatureEntry =
  | { readonly type: 'x509'; readonly owner: string; readonly certificate: CertificateInfo }
  | { readonly type: 'sha256'; readonly owner: string; readonly hash: string }
  | { readonly type: 'other'; readonly owner: string; readonly signatureType: string; readonly data: Buffer };

/** A sequence of EFI_SIGNATURE_LIST (the content of PK, KEK, db, dbx, MokList). */
export function parseSignatureLists(buf: Buffer, base: number): SignatureEntry[] {
  const r = new ByteReader(buf, base);
  const out: SignatureEntry[] = [];
  while (r.remaining > 0) {
    const at = r.offset;
    const signatureType = formatGuid(r.bytes(16, 'SignatureType'));
    const listSize = r.u32('SignatureListSize');
    const headerSize = r.u32('SignatureHeaderSize');
    const sigSize = r.u32('SignatureSize');
    const bodyLen = listSize - 28 - headerSize;
    if (listSize < 28 || bodyLen < 0 || bodyLen > r.remaining - headerSize) {
      r.fail(`EFI_SIGNATURE_LIST size ${listSize} (header ${headerSize}) does not fit`, at);
    }
    if (sigSize < 16 || bodyLen % sigSize !== 0) r.fail(`SignatureSize ${sigSize} does not divide the list body ${bodyLen}`, at);
    r.bytes(headerSize, 'SignatureHeader');
    for (let n = bodyLen / sigSize; n > 0; n--) {
      const owner = formatGuid(r.bytes(16, 'SignatureOwner'));
      const dataAt = r.offset;
      const data = r.bytes(sigSize - 16, 'SignatureData');
      // A known type with the wrong size is not something firmware would act on as that type.
      const known = signatureTypeByGuid(signatureType);
      if (known?.dataSize !== undefined && data.length !== known.dataSize) {
        r.fail(`${known.label} entry is ${data.length} bytes, expected ${known.dataSize}`, dataAt);
      }
      if (signatureType === Guids.EFI_CERT_X509) {
        out.push({ type: 'x509', owner, certificate: certificateInfo(data) });
      } else if (signatureType === Guids.EFI_CERT_SHA256) {
        out.push({ type: 'sha256', owner, hash: data.toString('hex') });
      } else {
        out.push({ type: 'other', owner, signatureType, data });
      }
    }
  }
  return out;
}

export interface DevicePathNode {
  readonly type: number;
  readonly subType: number;
  readonly data: Buffer;
}

/**
 * EFI_DEVICE_PATH_PROTOCOL nodes, up to the end node. Informational only (no
 * digest covers it), so a malformed path yields undefined instead of an error.
 */
export function parseDevicePath(b: Buffer): DevicePathNode[] | undefined {
  const nodes: DevicePathNode[] = [];
  let p = 0;
  while (p + 4 <= b.length) {
    const type = b[p]!;
    const subType = b[p + 1]!;
    const len = b.readUInt16LE(p + 2);
    if (len < 4 || p + len > b.length) return undefined;
    if (type === 0x7f && subType === 0xff) return nodes;
    nodes.push({ type, subType, data: b.subarray(p + 4, p + len) });
    p += len;
  }
  return p === b.length ? nodes : undefined;
}

/** UEFI text form of the nodes this module knows; others as Path(type,subtype,hex). */
export function devicePathText(nodes: readonly DevicePathNode[]): string {
  return nodes.map(nodeText).join('/');
}

function nodeText(n: DevicePathNode): string {
  const d = n.data;
  if (n.type === 0x7f && n.subType === 0x01) return ',';
  if (n.type === 0x04 && n.subType === 0x04) return utf16(d);
  if (n.type === 0x04 && n.subType === 0x01 && d.length >= 38 && d[37] === 2) {
    return `HD(${d.readUInt32LE(0)},GPT,${formatGuid(d.subarray(20, 36))})`;
  }
  if (n.type === 0x04 && n.subType === 0x06 && d.length === 16) return `FvFile(${formatGuid(d)})`;
  if (n.type === 0x04 && n.subType === 0x07 && d.length === 16) return `Fv(${formatGuid(d)})`;
  if (n.type === 0x01 && n.subType === 0x01 && d.length === 2) return `Pci(0x${d[1]!.toString(16)},0x${d[0]!.toString(16)})`;
  if (n.type === 0x02 && n.subType === 0x01 && d.length === 8 && d.readUInt32LE(0) === 0x0a0341d0) {
    return `PciRoot(0x${d.readUInt32LE(4).toString(16)})`;
  }
  return `Path(${n.type},${n.subType},${d.toString('hex')})`;
}

export interface ImageLoadEvent {
  readonly imageLocationInMemory: bigint;
  readonly imageLengthInMemory: bigint;
  readonly imageLinkTimeAddress: bigint;
  readonly devicePath: Buffer;
  /** Text form, or undefined if the device path is malformed. */
  readonly devicePathText: string | undefined;
}

/** UEFI_IMAGE_LOAD_EVENT. Some firmware logs a LengthOfDevicePath shorter than the bytes that follow: the extra bytes are ignored. */
export function parseImageLoadEvent(buf: Buffer, base: number): ImageLoadEvent {
  const r = new ByteReader(buf, base);
  const imageLocationInMemory = r.u64Big('ImageLocationInMemory');
  const imageLengthInMemory = r.u64Big('ImageLengthInMemory');
  const imageLinkTimeAddress = r.u64Big('ImageLinkTimeAddress');
  const len = r.u64('LengthOfDevicePath', Math.max(0, r.remaining - 8));
  const devicePath = r.bytes(len, 'DevicePath');
  const nodes = parseDevicePath(devicePath);
  return {
    imageLocationInMemory, imageLengthInMemory, imageLinkTimeAddress, devicePath,
    devicePathText: nodes ? devicePathText(nodes) : undefined,
  };
}

export interface GptPartition {
  readonly typeGuid: string;
  readonly uniqueGuid: string;
  readonly startingLba: bigint;
  readonly endingLba: bigint;
  readonly attributes: bigint;
  readonly name: string;
}

export interface GptEvent {
  readonly diskGuid: string;
  readonly partitions: readonly GptPartition[];
}

const GPT_HEADER_SIZE = 92;
const GPT_SIGNATURE = Buffer.from('EFI PART', 'latin1');

/** UEFI_GPT_DATA: the 92-byte EFI_PARTITION_TABLE_HEADER, NumberOfPartitions u64, then the entries. */
export function parseGptEvent(buf: Buffer, base: number): GptEvent {
  const r = new ByteReader(buf, base);
  const header = r.bytes(GPT_HEADER_SIZE, 'EFI_PARTITION_TABLE_HEADER');
  if (!header.subarray(0, 8).equals(GPT_SIGNATURE)) r.fail('GPT header signature is not "EFI PART"', base);
  const diskGuid = formatGuid(header.subarray(56, 72));
  const entrySize = header.readUInt32LE(84);
  if (entrySize < 128) r.fail(`SizeOfPartitionEntry ${entrySize} is below 128`, base + 84);
  const countAt = r.offset;
  const count = r.u64('NumberOfPartitions', Math.floor(r.remaining / entrySize));
  if (count * entrySize !== r.remaining) r.fail(`${count} partitions of ${entrySize} bytes do not fill the event`, countAt);
  const partitions: GptPartition[] = [];
  for (let i = 0; i < count; i++) {
    const e = r.bytes(entrySize, 'partition entry');
    partitions.push({
      typeGuid: formatGuid(e.subarray(0, 16)),
      uniqueGuid: formatGuid(e.subarray(16, 32)),
      startingLba: e.readBigUInt64LE(32),
      endingLba: e.readBigUInt64LE(40),
      attributes: e.readBigUInt64LE(48),
      name: utf16(e.subarray(56, 128)),
    });
  }
  return { diskGuid, partitions };
}
