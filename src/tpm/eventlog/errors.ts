/** Typed errors of the event-log parser, replay and decoders. */

/** The log (or one event's data) is malformed or exceeds a limit. `offset` is a byte offset into the raw log. */
export class EventLogParseError extends Error {
  override readonly name = 'EventLogParseError';
  constructor(
    readonly offset: number,
    readonly reason: string,
  ) {
    super(`event log: ${reason} (at byte offset ${offset})`);
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
