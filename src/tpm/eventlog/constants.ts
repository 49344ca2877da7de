/** Event types (TCG PC Client Platform Firmware Profile, section 10.4.1) and hash algorithm ids. */

export const EventType = {
  EV_PREBOOT_CERT: 0x00000000,
  EV_POST_CODE: 0x00000001,
  EV_UNUSED: 0x00000002,
  EV_NO_ACTION: 0x00000003,
  EV_SEPARATOR: 0x00000004,
  EV_ACTION: 0x00000005,
  EV_EVENT_TAG: 0x00000006,
  EV_S_CRTM_CONTENTS: 0x00000007,
  EV_S_CRTM_VERSION: 0x00000008,
  EV_CPU_MICROCODE: 0x00000009,
  EV_PLATFORM_CONFIG_FLAGS: 0x0000000a,
  EV_TABLE_OF_DEVICES: 0x0000000b,
  EV_COMPACT_HASH: 0x0000000c,
  EV_IPL: 0x0000000d,
  EV_IPL_PARTITION_DATA: 0x0000000e,
  EV_NONHOST_CODE: 0x0000000f,
  EV_NONHOST_CONFIG: 0x00000010,
  EV_NONHOST_INFO: 0x00000011,
  EV_OMIT_BOOT_DEVICE_EVENTS: 0x00000012,
  EV_POST_CODE2: 0x00000013,
  EV_EFI_EVENT_BASE: 0x80000000,
  EV_EFI_VARIABLE_DRIVER_CONFIG: 0x80000001,
  EV_EFI_VARIABLE_BOOT: 0x80000002,
  EV_EFI_BOOT_SERVICES_APPLICATION: 0x80000003,
  EV_EFI_BOOT_SERVICES_DRIVER: 0x80000004,
  EV_EFI_RUNTIME_SERVICES_DRIVER: 0x80000005,
  EV_EFI_GPT_EVENT: 0x80000006,
  EV_EFI_ACTION: 0x80000007,
  EV_EFI_PLATFORM_FIRMWARE_BLOB: 0x80000008,
  EV_EFI_HANDOFF_TABLES: 0x80000009,
  EV_EFI_PLATFORM_FIRMWARE_BLOB2: 0x8000000a,
  EV_EFI_HANDOFF_TABLES2: 0x8000000b,
  EV_EFI_VARIABLE_BOOT2: 0x8000000c,
  EV_EFI_GPT_EVENT2: 0x8000000d,
  EV_EFI_HCRTM_EVENT: 0x80000010,
  EV_EFI_VARIABLE_AUTHORITY: 0x800000e0,
  EV_EFI_SPDM_FIRMWARE_BLOB: 0x800000e1,
  EV_EFI_SPDM_FIRMWARE_CONFIG: 0x800000e2,
} as const;

export type EventTypeName = keyof typeof EventType;

const namesByValue = new Map<number, EventTypeName>(
  (Object.entries(EventType) as [EventTypeName, number][]).map(([k, v]) => [v, k]),
);

/** `EV_SEPARATOR`, or `EV_UNKNOWN_0x…` for a type this module does not name. */
export function eventTypeName(type: number): string {
  return namesByValue.get(type) ?? `EV_UNKNOWN_0x${type.toString(16).padStart(8, '0')}`;
}

/** Banks that can be replayed (Node has the hash). */
export type HashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512';
export const HASH_ALGS: readonly HashAlg[] = ['sha1', 'sha256', 'sha384', 'sha512'];

/** TPM_ALG_ID → bank name and digest size, for the algorithms that can be replayed. */
export const KNOWN_ALGS: ReadonlyMap<number, { alg: HashAlg; size: number }> = new Map([
  [0x0004, { alg: 'sha1', size: 20 }],
  [0x000b, { alg: 'sha256', size: 32 }],
  [0x000c, { alg: 'sha384', size: 48 }],
  [0x000d, { alg: 'sha512', size: 64 }],
]);

export const ALG_IDS: Readonly<Record<HashAlg, number>> = { sha1: 0x0004, sha256: 0x000b, sha384: 0x000c, sha512: 0x000d };

export const DIGEST_SIZES: Readonly<Record<HashAlg, number>> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };

/** Limits for hostile input; callers may lower them. */
export const DEFAULT_LIMITS = {
  /** Whole log. */
  maxLogBytes: 16 * 1024 * 1024,
  /** One event's data. */
  maxEventBytes: 1024 * 1024,
  /** Number of events (bounds memory: ~16 bytes of input could otherwise become one object each). */
  maxEvents: 65_536,
} as const;

export type EventLogLimits = { readonly [K in keyof typeof DEFAULT_LIMITS]: number };

/** Platform PCRs of a PC Client TPM are 0–23. */
export const MAX_PCR_INDEX = 23;

/** Windows logs informational events (EV_NO_ACTION, WBCL tags) with PCR index -1: they are never extended. */
export const LOG_ONLY_PCR = 0xffffffff;
