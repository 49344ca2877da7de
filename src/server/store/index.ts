/**
 * The server's datastore: the Datastore interface, its records, the embedded
 * SQLite implementation and the PostgreSQL one (several servers on one database).
 */
export type {
  AttestedNode,
  AuthorizedEntries,
  BatchItemResult,
  BatchResult,
  Datastore,
  EntryChanges,
  EntryFilter,
  EntryId,
  EntryInput,
  FederatedBundle,
  NodeAttestation,
  NodeFilter,
  NodeRenewal,
  NodeStatus,
  NonceConsumeResult,
  OwnBundle,
  Page,
  PageRequest,
  QuoteClock,
  RegistrationEntry,
  SetMatch,
  StoreChange,
  SvidRef,
  Unsubscribe,
} from './types.js';
export {
  ConflictError,
  InvalidRecordError,
  NodeBannedError,
  NodeNotActiveError,
  NotFoundError,
  SchemaTooNewError,
  StoreError,
  StoreFullError,
} from './errors.js';
export { formatSelector, normalizeSelectors, parseSelector, type Selector } from './selectors.js';
export { serverIdOf, SERVER_ID_PATH } from './node-groups.js';
export { MAX_SVID_TTL_SECONDS } from './validate.js';
export { LATEST_SCHEMA_VERSION } from './migrations.js';
export { SqliteDatastore, type SqliteDatastoreOptions } from './sqlite-datastore.js';
export { PostgresDatastore, CHANGE_CHANNEL, type PostgresDatastoreOptions } from './postgres-datastore.js';
export { describeConnection, type PasswordSource, type PostgresConnectionOptions, type SslMode } from './pg-connection.js';
export { PG_LATEST_SCHEMA_VERSION } from './pg-migrations.js';
