/**
 * Loading the server's and the agent's configuration files, the same way for
 * `run` and `validate`: one place decides what a start reads.
 */
import { agentConfigSchema, ConfigError, loadConfig, serverConfigSchema, type AgentConfig, type ServerConfig } from '../config/index.js';
import { CliError } from './command.js';

/** The `server:` section of a server configuration file. Throws ConfigError. */
export function loadServerConfig(file: string): ServerConfig {
  return loadConfig(file, serverConfigSchema).server;
}

/** The `agent:` section of an agent configuration file. Throws ConfigError. */
export function loadAgentConfig(file: string): AgentConfig {
  return loadConfig(file, agentConfigSchema).agent;
}

/** Runs a loader for a command that cannot go on without its configuration: a ConfigError becomes a CliError (exit 1). */
export function configForCommand<T>(load: () => T): T {
  try {
    return load();
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(e.message);
    throw e;
  }
}
