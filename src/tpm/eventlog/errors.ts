/** Typed errors of the event-log parser, replay and decoders. */

/** The log (or one event's data) is malformed or exceeds a limit. `offset` is a byte offset into the raw log. */
export class EventLogParseError extends Error {
  override readonly name: string = 'EventLogParseError';
  constructor(
    readonly offset: number,
    readonly reason: string,
  ) {
    super(`event log: ${reason} (at byte offset ${offset})`);
  }
}

/**
 * A TCG_PCR_EVENT2 lacks a digest for a bank the Spec ID event lists. The PC
 * Client spec requires every listed bank in every event; a log that leaves
 * one out could hide what it extended there.
 */
export class EventLogMissingDigestError extends EventLogParseError {
  override readonly name: string = 'EventLogMissingDigestError';
  constructor(
    offset: number,
    /** Sequence number of the event. */
    readonly eventIndex: number,
    /** Banks the Spec ID event lists and the event does not carry (`sha256`, or `alg 0x0012` for one keel does not name). */
    readonly missingBanks: readonly string[],
  ) {
    super(offset, `event ${eventIndex} carries no ${missingBanks.join(', ')} digest, which the Spec ID event lists (every listed bank is required)`);
  }
}

/**
 * The log's account of an H-CRTM sequence (EV_EFI_HCRTM_EVENT) is not one a
 * TPM can produce: not in PCR 0, not its first measurement, twice, with other
 * event data, or next to a StartupLocality that gives PCR 0 another start.
 */
export class EventLogHcrtmError extends EventLogParseError {
  override readonly name: string = 'EventLogHcrtmError';
  constructor(
    offset: number,
    readonly eventIndex: number,
    reason: string,
  ) {
    super(offset, `H-CRTM: ${reason}`);
  }
}

/** The replayed log disagrees with the quoted PCRs, or a bank cannot be replayed. */
export class EventLogReplayError extends Error {
  override readonly name = 'EventLogReplayError';
  constructor(
    readonly bank: string,
    readonly pcrIndex: number | undefined,
    readonly reason: string,
    /** Sequence number of the offending event, when one event is to blame. */
    readonly eventIndex?: number,
  ) {
    super(`event log replay (${bank}${pcrIndex === undefined ? '' : `, PCR ${pcrIndex}`}): ${reason}`);
  }
}

/** An event that a summary relies on does not hash to its digest. */
export class EventLogDigestError extends Error {
  override readonly name = 'EventLogDigestError';
  constructor(
    readonly bank: string,
    readonly eventIndex: number,
    readonly pcrIndex: number,
    readonly eventType: string,
  ) {
    super(`event log: event ${eventIndex} (${eventType}, PCR ${pcrIndex}) does not hash to its ${bank} digest`);
  }
}
