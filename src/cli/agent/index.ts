/** The `keel agent` commands: the agent process and Workload API clients. */
export { agentRunCommand } from './run.js';
export { fetchX509Command, fetchJwtCommand, validateJwtCommand, watchCommand, interrupted } from './api.js';
export { agentHealthcheckCommand } from './healthcheck.js';
export { writeCommand, runFilesHelper } from './write.js';
export { WorkloadApiClient, workloadTarget, describeRpcError, structToJson } from './workload-client.js';
