/** keel server's HTTP API: health, metrics, bundle endpoint, OIDC discovery, admin API. */
export { createHttpApi, startHttpApi, HttpApiConfigError, type HttpApi, type HttpApiHandle, type HttpApiOptions, type HttpListenOptions } from './http-api.js';
export type { BundleProvider, CaKeyStatus } from './bundle-provider.js';
export { AdminSocketError, prepareAdminSocket } from './admin-socket.js';
export { clientChain, localAuthenticator, svidAuthenticator, type AdminAuthOptions, type Authenticate } from './admin-auth.js';
export {
  Counter,
  createKeelMetrics,
  DEFAULT_BUCKETS,
  Gauge,
  Histogram,
  MetricDefinitionError,
  MetricsRegistry,
  PROMETHEUS_CONTENT_TYPE,
  type KeelMetrics,
  type Labels,
} from './metrics.js';
export { PROBLEM_CONTENT_TYPE, ProblemError, problemType, type FieldError, type ProblemBody, type ProblemSlug } from './problem.js';
export { agentToJson, entryToJson, MAX_BATCH, type AgentJson, type EntryJson, type NodeStatusJson } from './wire.js';
export { discoveryDocument, oidcJwks, type OidcJwk } from './oidc.js';
