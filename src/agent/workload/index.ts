/** The agent's SPIFFE Workload API server and workload attestation. */
export { startWorkloadApiServer, SECURITY_HEADER, MAX_JWT_AUDIENCES } from './server.js';
export { workloadAuditEvent } from './audit.js';
export { svidKeyGenerator, SVID_KEY_TYPES } from './svid-key.js';
export type { SvidKeyType } from './svid-key.js';
export { DEFAULT_LIMITS } from './limits.js';
export type { WorkloadApiLimits } from './limits.js';
export type { WorkloadApiServer, WorkloadApiServerOptions, WorkloadAuditEvent, WorkloadRpc } from './server.js';
export { WorkloadAttestor, uptimeTicks } from './attestor.js';
export type { ExeIdentity, ProcessImage, ProcessStamp, WorkloadAttestation, WorkloadAttestorOptions } from './attestor.js';
export type {
  BundleSnapshot,
  FetchJwtOptions,
  IdentitySource,
  Identity,
  IssuedJwtSvid,
  IssuedWitSvid,
  MatchedEntry,
  TrustDomainBundle,
  Unsubscribe,
  ValidatedJwt,
  WorkloadLookup,
  X509SvidMaterial,
} from './identity-source.js';
export { formatSelector, kindOf, selectorSetKey } from './selectors.js';
export type { Selector, SelectorKind } from './selectors.js';
export { ProcFormatError, WorkloadApiStartError, WorkloadAttestationError } from './errors.js';
export type { AttestationFailure, ServerStartFailure } from './errors.js';
export { workloadProtoPath, PROTO_LOADER_OPTIONS } from './proto.js';
