/**
 * The facts a firmware policy asserts, pulled from a log. Every event whose
 * data is read here must hash to its digest in `bank` (EventLogDigestError
 * otherwise): decoded data that the digest does not vouch for is worthless.
 * Run this after verifyReplay has tied the digests to the quoted PCRs.
 */
import { EventType, type HashAlg } from './constants.js';
import { verifyEventDigest, type DigestForm } from './digests.js';
import { decodeEventData, type DecodedEvent, type KnownVariable } from './event-data.js';
import { Guids, type SignatureEntry } from './efi.js';
import { typedSignature, type TypedSignature } from './signature-types.js';
import { EventLogDigestError, EventLogParseError, EventLogReplayError } from './errors.js';
import { eventDigest, type EventLog, type TcgEvent } from './parse.js';

export interface CertificateSummary {
  /** Lowercase hex SHA-256 of the certificate DER. */
  readonly sha256: string;
  readonly subject: string | undefined;
  /** EFI_SIGNATURE_DATA owner GUID, when the log carries one. */
  readonly owner: string | undefined;
}

/** One entry of PK, KEK, db or dbx, of any signature type. */
export interface SignatureSummary extends TypedSignature {
  /** EFI_SIGNATURE_DATA owner GUID. */
  readonly owner: string;
  /** X.509 entries: the certificate subject, when it parses. */
  readonly subject: string | undefined;
}

export type SignatureDatabase = 'pk' | 'kek' | 'db' | 'dbx';

export interface BootApplication {
  readonly seq: number;
  /** Authenticode hash of the image (hex), from `bank`. */
  readonly digest: string;
  readonly devicePath: string | undefined;
}

export interface EventLogSummary {
  readonly bank: HashAlg;
  /** SecureBoot variable as measured in PCR 7; undefined if the log does not measure it. */
  readonly secureBoot: boolean | undefined;
  readonly pk: readonly CertificateSummary[];
  readonly kek: readonly CertificateSummary[];
  readonly db: readonly CertificateSummary[];
  readonly dbHashes: readonly string[];
  readonly dbx: readonly CertificateSummary[];
  readonly dbxHashes: readonly string[];
  /**
   * Every entry of each list, of every signature type, in the variable's
   * order. The fields above keep only X.509 and SHA-256 entries; a policy
   * that pins a list must read this one, or it misses the other types.
   */
  readonly signatures: Readonly<Record<SignatureDatabase, readonly SignatureSummary[]>>;
  /** Certificates that authorized loaded images (EV_EFI_VARIABLE_AUTHORITY in PCR 7). */
  readonly authorities: readonly CertificateSummary[];
  /** EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4: boot loaders, shim, UKI/kernel. */
  readonly bootApplications: readonly BootApplication[];
  /** Kernel command lines from EV_IPL in PCR 8, 9 or 12 (grub `kernel_cmdline:`, systemd-boot UTF-16). */
  readonly kernelCommandLines: readonly string[];
  /** PCRs that received an EV_SEPARATOR, ascending. */
  readonly separators: readonly number[];
  /** PCRs whose separator carries an error value. */
  readonly separatorErrors: readonly number[];
  /** Quirk forms through which some event used here matched its digest. */
  readonly digestQuirks: readonly DigestForm[];
}

const CONFIG_VARIABLES: ReadonlySet<KnownVariable> = new Set(['SecureBoot', 'PK', 'KEK', 'db', 'dbx']);
const CMDLINE_PCRS: ReadonlySet<number> = new Set([8, 9, 12]);

function certs(entries: readonly SignatureEntry[]): CertificateSummary[] {
  return entries.flatMap((s) =>
    s.type === 'x509' ? [{ sha256: s.certificate.sha256, subject: s.certificate.subject, owner: s.owner }] : [],
  );
}

function typed(entries: readonly SignatureEntry[]): SignatureSummary[] {
  return entries.map((s) => {
    if (s.type === 'x509') {
      return { ...typedSignature(Guids.EFI_CERT_X509, s.certificate.der), owner: s.owner, subject: s.certificate.subject };
    }
    if (s.type === 'sha256') {
      return { ...typedSignature(Guids.EFI_CERT_SHA256, Buffer.from(s.hash, 'hex')), owner: s.owner, subject: undefined };
    }
    return { ...typedSignature(s.signatureType, s.data), owner: s.owner, subject: undefined };
  });
}

function hashes(entries: readonly SignatureEntry[]): string[] {
  return entries.flatMap((s) => (s.type === 'sha256' ? [s.hash] : []));
}

export function summarize(log: EventLog, bank: HashAlg): EventLogSummary {
  const quirks = new Set<DigestForm>();
  /** Decodes an event and insists that its data is what was measured. */
  const trusted = (e: TcgEvent): DecodedEvent => {
    const v = verifyEventDigest(e, bank);
    if (v.status === 'mismatch') throw new EventLogDigestError(bank, e.seq, e.pcrIndex, e.typeName);
    if (v.status === 'match' && v.form !== 'event-data') quirks.add(v.form);
    return decodeEventData(e);
  };

  let secureBoot: boolean | undefined;
  const lists = new Map<KnownVariable, readonly SignatureEntry[]>();
  const authorities: CertificateSummary[] = [];
  const bootApplications: BootApplication[] = [];
  const kernelCommandLines: string[] = [];
  const separators = new Set<number>();
  const separatorErrors = new Set<number>();

  for (const e of log.events) {
    switch (e.eventType) {
      case EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: {
        if (e.pcrIndex !== 7) break;
        const d = trusted(e);
        if (d.kind !== 'uefi-variable' || !d.known || !CONFIG_VARIABLES.has(d.known)) break;
        // One measurement per variable: a second one would let the log say two things.
        if (d.known === 'SecureBoot' ? secureBoot !== undefined : lists.has(d.known)) {
          throw new EventLogParseError(e.offset, `${d.known} is measured twice in PCR 7`);
        }
        if (d.known === 'SecureBoot') secureBoot = d.secureBoot;
        else lists.set(d.known, d.signatures ?? []);
        break;
      }
      case EventType.EV_EFI_VARIABLE_AUTHORITY: {
        if (e.pcrIndex !== 7) break;
        const d = trusted(e);
        if (d.kind === 'variable-authority' && d.certificate) {
          authorities.push({ sha256: d.certificate.sha256, subject: d.certificate.subject, owner: d.owner });
        }
        break;
      }
      case EventType.EV_EFI_BOOT_SERVICES_APPLICATION: {
        if (e.pcrIndex !== 4) break;
        const digest = eventDigest(e, bank);
        if (!digest) throw new EventLogReplayError(bank, e.pcrIndex, `event ${e.seq} has no ${bank} digest`, e.seq);
        const d = decodeEventData(e);
        const devicePath = d.kind === 'image-load' ? d.image.devicePathText : undefined;
        bootApplications.push({ seq: e.seq, digest: digest.toString('hex'), devicePath });
        break;
      }
      case EventType.EV_IPL: {
        if (!CMDLINE_PCRS.has(e.pcrIndex)) break;
        const d = decodeEventData(e);
        if (d.kind !== 'ipl' || (d.source !== 'grub-kernel-cmdline' && d.source !== 'utf16-text')) break;
        trusted(e);
        kernelCommandLines.push(d.text);
        break;
      }
      case EventType.EV_SEPARATOR: {
        const d = trusted(e);
        if (d.kind !== 'separator') break;
        separators.add(e.pcrIndex);
        if (d.error) separatorErrors.add(e.pcrIndex);
        break;
      }
      default:
        break;
    }
  }
  const list = (k: KnownVariable): readonly SignatureEntry[] => lists.get(k) ?? [];
  const asc = (s: Set<number>): number[] => [...s].sort((a, b) => a - b);
  return {
    bank,
    secureBoot,
    pk: certs(list('PK')),
    kek: certs(list('KEK')),
    db: certs(list('db')),
    dbHashes: hashes(list('db')),
    dbx: certs(list('dbx')),
    dbxHashes: hashes(list('dbx')),
    signatures: { pk: typed(list('PK')), kek: typed(list('KEK')), db: typed(list('db')), dbx: typed(list('dbx')) },
    authorities,
    bootApplications,
    kernelCommandLines,
    separators: asc(separators),
    separatorErrors: asc(separatorErrors),
    digestQuirks: [...quirks],
  };
}
