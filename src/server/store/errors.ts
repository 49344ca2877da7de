/**
 * Typed errors of the datastore. Every failure a caller can act on has its own
 * class; anything else (I/O, corruption, a driver bug) is a plain StoreError
 * with the driver's error as `cause`.
 */

/** Base class: any failure of the datastore. */
export class StoreError extends Error {
  override name = 'StoreError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The disk holding the database is full (SQLite's SQLITE_FULL, PostgreSQL's
 * disk_full, SQLSTATE 53100). The write was rolled back; reads go on, and
 * writes succeed again once there is space.
 */
export class StoreFullError extends StoreError {
  override name = 'StoreFullError';
  readonly code: 'SQLITE_FULL' | 'PG_DISK_FULL';
  constructor(options?: { cause?: unknown; code?: 'SQLITE_FULL' | 'PG_DISK_FULL' }) {
    const code = options?.code ?? 'SQLITE_FULL';
    super(`the store cannot write: the disk holding the database is full (${code === 'SQLITE_FULL' ? 'SQLITE_FULL' : 'SQLSTATE 53100'})`, options);
    this.code = code;
  }
}

/** The record named does not exist. */
export class NotFoundError extends StoreError {
  override name = 'NotFoundError';
  constructor(
    readonly kind: 'entry' | 'node' | 'bundle' | 'nonce',
    readonly key: string,
  ) {
    super(`${kind} ${JSON.stringify(key)} not found`);
  }
}

/**
 * A write would break a uniqueness rule or a compare-and-set precondition;
 * `conflict` names what collided (and, where known, the existing record's id).
 */
export class ConflictError extends StoreError {
  override name = 'ConflictError';
  constructor(
    readonly conflict: string,
    readonly existingId?: string,
  ) {
    super(`conflict: ${conflict}`);
  }
}

/** A record handed to the store breaks a rule of its type (bad selector, TTL, JSON…). */
export class InvalidRecordError extends StoreError {
  override name = 'InvalidRecordError';
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`invalid ${field}: ${reason}`);
  }
}

/** The node is banned: attestation and renewal are refused until it is unbanned. */
export class NodeBannedError extends StoreError {
  override name = 'NodeBannedError';
  constructor(
    readonly agentId: string,
    readonly reason: string,
  ) {
    super(`node ${agentId} is banned: ${reason}`);
  }
}

/** Renewal of a node that was evicted (or unbanned): it must attest again. */
export class NodeNotActiveError extends StoreError {
  override name = 'NodeNotActiveError';
  constructor(
    readonly agentId: string,
    readonly status: 'evicted' | 'banned' | 'drifted',
  ) {
    super(`node ${agentId} is ${status}; it must attest again`);
  }
}

/** The database was written by a newer keel: opening it could corrupt it. */
export class SchemaTooNewError extends StoreError {
  override name = 'SchemaTooNewError';
  constructor(
    readonly found: number,
    readonly supported: number,
  ) {
    super(`database schema version ${found} is newer than this keel supports (${supported}); upgrade keel`);
  }
}
