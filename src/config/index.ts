/** keel's configuration files: the loader, the value types, the server and agent schemas. */
export { ConfigError, type ConfigIssue } from './errors.js';
export { configFileRefusal, formatKeyPath, formatMode, loadConfig, MAX_CONFIG_BYTES, parseConfigText } from './load.js';
export {
  configPath,
  duration,
  hostPort,
  logLevel,
  parseDuration,
  parseHostPort,
  parseSize,
  secretSource,
  sha256Hex,
  size,
  trustDomain,
  type HostPort,
  type SecretSource,
} from './values.js';
export { CA_TTL_FACTOR, serverConfigSchema, type ServerConfig, type ServerConfigFile } from './server-schema.js';
export { agentConfigSchema, DEFAULT_WORKLOAD_API_SOCKET, WORKLOAD_API_DEFAULTS, type AgentConfig, type AgentConfigFile } from './agent-schema.js';
