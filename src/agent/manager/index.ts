/** The agent's SVID manager: entries in sync, workload SVIDs and JWT-SVIDs, the agent's own SVID. */
export { SvidManager, DEFAULT_MAX_BATCH, type SvidManagerOptions } from './svid-manager.js';
export { AgentSvidRotator, type AgentIdentity, type AgentSvidRotatorOptions } from './agent-svid.js';
export { Backoff, formatDelay, type BackoffOptions } from './backoff.js';
export { JwtSvidCache, jwtCacheKey, type CachedJwtSvid } from './jwt-cache.js';
export { renewalTime, jwtIsFresh, batches, RENEWAL_JITTER_FRACTION } from './schedule.js';
export { SvidManagerError, type SvidManagerFailure } from './errors.js';
export type { NodeApi, SyncHandlers } from './node-api.js';
