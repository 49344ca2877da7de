/**
 * Does an event's data hash to its digest? Only for the types where the spec
 * makes the digest a hash of (part of) the event data; for the others (images,
 * firmware blobs, files grub loaded) the digest is of something not in the log.
 *
 * Known firmware and boot-loader deviations are accepted explicitly and named
 * (`form`), so a policy can refuse them if it wants:
 * - `variable-data-only`: EV_EFI_VARIABLE_BOOT(2) hashed over VariableData
 *   only instead of the whole UEFI_VARIABLE_DATA (EDK2-based firmware, e.g.
 *   every GCE log here; go-attestation documents it).
 * - `shim-authority-minus-last-byte`: shim's EV_EFI_VARIABLE_AUTHORITY for its
 *   vendor cert / MokList / db, a bare certificate plus padding, hashed without
 *   the event's last byte (go-attestation issue 157, fixed in shim 8a27a480).
 * - `ipl-text-after-prefix`: grub's `grub_cmd: …` / `kernel_cmdline: …`
 *   events hash only the text after the prefix (upstream grub without the
 *   NUL, RHEL 8's with it); the prefix itself is not covered by the digest.
 * - `utf16-text-with-nul`: systemd-boot's UTF-16 command line, hashed with its
 *   terminating NUL, which old versions left (partly) out of the event data.
 */
import { createHash } from 'node:crypto';
import { EventType, type EventTypeName, type HashAlg } from './constants.js';
import { decodeEventData, iplPrefix, type DecodedEvent } from './event-data.js';
import { EventLogParseError } from './errors.js';
import { eventDigest, type EventLog, type TcgEvent } from './parse.js';

/** Event types whose data is covered by their digest. */
export type CheckableEventType = Extract<
  EventTypeName,
  | 'EV_SEPARATOR'
  | 'EV_ACTION'
  | 'EV_EFI_ACTION'
  | 'EV_EFI_VARIABLE_DRIVER_CONFIG'
  | 'EV_EFI_VARIABLE_BOOT'
  | 'EV_EFI_VARIABLE_BOOT2'
  | 'EV_EFI_VARIABLE_AUTHORITY'
  | 'EV_EFI_GPT_EVENT'
  | 'EV_S_CRTM_VERSION'
  | 'EV_IPL'
>;

export const CHECKABLE_EVENT_TYPES: readonly CheckableEventType[] = [
  'EV_SEPARATOR', 'EV_ACTION', 'EV_EFI_ACTION', 'EV_EFI_VARIABLE_DRIVER_CONFIG', 'EV_EFI_VARIABLE_BOOT',
  'EV_EFI_VARIABLE_BOOT2', 'EV_EFI_VARIABLE_AUTHORITY', 'EV_EFI_GPT_EVENT', 'EV_S_CRTM_VERSION', 'EV_IPL',
];

export type DigestForm =
  | 'event-data'
  | 'variable-data-only'
  | 'shim-authority-minus-last-byte'
  | 'ipl-text-after-prefix'
  | 'utf16-text-with-nul';

export type DigestVerdict =
  /** The digest is not a hash of this event's data (an image, a file, a blob), so there is nothing to check. */
  | { readonly status: 'not-applicable' }
  | { readonly status: 'match'; readonly form: DigestForm }
  | { readonly status: 'mismatch'; readonly reason: string };

function candidates(e: TcgEvent, d: DecodedEvent): Array<[DigestForm, Buffer]> | undefined {
  const full: [DigestForm, Buffer] = ['event-data', e.data];
  switch (d.kind) {
    case 'separator':
    case 'action':
    case 'gpt':
    case 's-crtm-version':
      return [full];
    case 'uefi-variable':
      return e.eventType === EventType.EV_EFI_VARIABLE_DRIVER_CONFIG ? [full] : [full, ['variable-data-only', d.variable.data]];
    case 'variable-authority':
      return d.quirk === 'shim-missing-owner'
        ? [full, ['shim-authority-minus-last-byte', e.data.subarray(0, e.data.length - 1)]]
        : [full];
    case 'ipl': {
      if (d.source === 'grub-cmd' || d.source === 'grub-kernel-cmdline') {
        const after = e.data.subarray(iplPrefix(e.data)![0].length);
        const noNul = after.at(-1) === 0 ? after.subarray(0, after.length - 1) : after;
        // Upstream grub hashes the text without its NUL, RHEL 8's grub ("grub_cmd " prefix) with it.
        return [full, ['ipl-text-after-prefix', noNul], ['ipl-text-after-prefix', after]];
      }
      if (d.source === 'utf16-text') {
        return [full, ['utf16-text-with-nul', Buffer.from(`${d.text}\0`, 'utf16le')]];
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

/**
 * Checks one event's data against its digest in `bank`. A malformed event of
 * a checkable type is a mismatch, not an exception.
 */
export function verifyEventDigest(e: TcgEvent, bank: HashAlg): DigestVerdict {
  let decoded: DecodedEvent;
  try {
    decoded = decodeEventData(e);
  } catch (err) {
    if (err instanceof EventLogParseError) return { status: 'mismatch', reason: `malformed: ${err.reason}` };
    throw err;
  }
  const cands = candidates(e, decoded);
  if (!cands) return { status: 'not-applicable' };
  const digest = eventDigest(e, bank);
  if (!digest) return { status: 'mismatch', reason: `no ${bank} digest` };
  for (const [form, bytes] of cands) {
    if (createHash(bank).update(bytes).digest().equals(digest)) return { status: 'match', form };
  }
  return { status: 'mismatch', reason: `data does not hash to the ${bank} digest` };
}

export interface DigestCheckEntry {
  readonly event: TcgEvent;
  readonly form: DigestForm;
}

export interface DigestFailure {
  readonly event: TcgEvent;
  readonly reason: string;
}

export interface DigestCheckReport {
  readonly bank: HashAlg;
  /** Events whose data hashes to their digest (by any accepted form). */
  readonly matched: readonly DigestCheckEntry[];
  /** Of those, the ones accepted only through a documented quirk. */
  readonly quirks: readonly DigestCheckEntry[];
  /** Events whose data does not hash to their digest, or is malformed. */
  readonly failures: readonly DigestFailure[];
  /** Events of the requested types whose digest does not cover their data (e.g. grub's file events). */
  readonly notApplicable: readonly TcgEvent[];
}

/** Checks every event of `types` (default: all checkable types) in `bank`. */
export function checkEventDigests(
  log: EventLog,
  bank: HashAlg,
  types: readonly CheckableEventType[] = CHECKABLE_EVENT_TYPES,
): DigestCheckReport {
  const wanted = new Set<number>(types.map((t) => EventType[t]));
  const matched: DigestCheckEntry[] = [];
  const failures: DigestFailure[] = [];
  const notApplicable: TcgEvent[] = [];
  for (const event of log.events) {
    if (!wanted.has(event.eventType)) continue;
    const v = verifyEventDigest(event, bank);
    if (v.status === 'match') matched.push({ event, form: v.form });
    else if (v.status === 'mismatch') failures.push({ event, reason: v.reason });
    else notApplicable.push(event);
  }
  return { bank, matched, quirks: matched.filter((m) => m.form !== 'event-data'), failures, notApplicable };
}
