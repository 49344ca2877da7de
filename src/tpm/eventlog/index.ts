/**
 * TCG PC Client measured-boot event log: parsing (SHA-1 and crypto-agile
 * formats), replay into PCR banks and comparison with quoted PCRs, typed
 * decoding of the events a firmware policy checks, digest checks of event
 * data, and a summary for policies.
 */
export {
  EventLogParseError,
  EventLogReplayError,
  EventLogDigestError,
  EventLogMissingDigestError,
  EventLogHcrtmError,
} from './errors.js';
export {
  EventType,
  eventTypeName,
  HASH_ALGS,
  DEFAULT_LIMITS,
  MAX_PCR_INDEX,
  LOG_ONLY_PCR,
  type EventTypeName,
  type HashAlg,
  type EventLogLimits,
} from './constants.js';
export {
  parseEventLog,
  eventDigest,
  logBanks,
  isStartupLocalityEvent,
  type EventLog,
  type TcgEvent,
  type EventDigest,
  type SpecIdEvent,
  type SpecIdAlgorithm,
  type ParseOptions,
} from './parse.js';
export {
  replay,
  verifyReplay,
  initialPcrValue,
  pcr0StartLocality,
  type PcrValues,
  type ReplayOptions,
  type ReplayMatch,
} from './replay.js';
export {
  decodeEventData,
  knownVariable,
  type DecodedEvent,
  type KnownVariable,
  type IplSource,
  type AuthorityQuirk,
  type FirmwareBlob,
} from './event-data.js';
export {
  Guids,
  formatGuid,
  type UefiVariableData,
  type SignatureEntry,
  type CertificateInfo,
  type ImageLoadEvent,
  type GptEvent,
  type GptPartition,
} from './efi.js';
export {
  checkEventDigests,
  verifyEventDigest,
  CHECKABLE_EVENT_TYPES,
  type CheckableEventType,
  type DigestForm,
  type DigestVerdict,
  type DigestCheckReport,
  type DigestCheckEntry,
  type DigestFailure,
} from './digests.js';
export {
  summarize,
  type EventLogSummary,
  type CertificateSummary,
  type SignatureSummary,
  type SignatureDatabase,
  type BootApplication,
} from './summary.js';
export {
  SIGNATURE_TYPES,
  signatureTypeByGuid,
  signatureTypeByName,
  typedSignature,
  valueHexLength,
  type SignatureTypeName,
  type SignatureTypeInfo,
  type TypedSignature,
} from './signature-types.js';
