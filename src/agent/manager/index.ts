/** The agent's SVID manager: entries in sync, workload SVIDs and JWT-SVIDs, the agent's own SVID. */
export { SvidManager, DEFAULT_MAX_BATCH, JWT_FETCH_BUDGET_MS, JWT_ATTEMPT_TIMEOUT_MS, type SvidManagerOptions } from './svid-manager.js';
export { AgentSvidRotator, type AgentIdentity, type AgentSvidRotatorOptions } from './agent-svid.js';
export { Backoff, formatDelay, type BackoffOptions } from './backoff.js';
export { JwtSvidCache, jwtCacheKey, type CachedJwtSvid } from './jwt-cache.js';
export {
  renewalTime,
  renewalRetryCap,
  renewalAttemptTimeout,
  jwtIsFresh,
  batches,
  RENEWAL_JITTER_FRACTION,
  RENEWAL_RETRY_MAX_MS,
  RENEWAL_RETRY_MIN_MS,
  RENEWAL_ATTEMPT_MAX_MS,
  RENEWAL_ATTEMPT_MIN_MS,
} from './schedule.js';
export { SvidManagerError, type SvidManagerFailure } from './errors.js';
export type { NodeApi, SyncHandlers } from './node-api.js';
