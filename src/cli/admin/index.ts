/**
 * The admin commands of `keel`, each a Command object for the command table
 * in src/cli/main.ts. The factories take an output sink (tests capture it);
 * the named exports write to the process's stdout/stderr.
 */
import type { Command } from '../command.js';
import { agentCommands } from './agent.js';
import { bundleCommands } from './bundle.js';
import { entryCommands } from './entry.js';
import { healthcheckCommand } from './healthcheck.js';
import { processIo, type CliIo } from './io.js';

export { AdminApiError, AdminClient, DEFAULT_ADMIN_SOCKET, type AdminResponse, type Problem } from './client.js';
export { agentCommands, bundleCommands, entryCommands, healthcheckCommand, processIo, type CliIo };

/** Every admin command by its name on the command line (`entry create`, `healthcheck`…). */
export function adminCommands(io: CliIo = processIo): Record<string, Command> {
  const table: Record<string, Command> = {};
  for (const [group, cmds] of [
    ['entry', entryCommands(io)],
    ['agent', agentCommands(io)],
    ['bundle', bundleCommands(io)],
  ] as const) {
    for (const [name, cmd] of Object.entries(cmds)) table[`${group} ${name}`] = cmd;
  }
  table.healthcheck = healthcheckCommand(io);
  return table;
}

const std = adminCommands();
export const entryCreate = std['entry create']!;
export const entryList = std['entry list']!;
export const entryShow = std['entry show']!;
export const entryUpdate = std['entry update']!;
export const entryDelete = std['entry delete']!;
export const agentList = std['agent list']!;
export const agentShow = std['agent show']!;
export const agentEvict = std['agent evict']!;
export const agentBan = std['agent ban']!;
export const agentUnban = std['agent unban']!;
export const bundleShow = std['bundle show']!;
export const bundleList = std['bundle list']!;
export const bundleSet = std['bundle set']!;
export const bundleDelete = std['bundle delete']!;
export const healthcheck = std.healthcheck!;
