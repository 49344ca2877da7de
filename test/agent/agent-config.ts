/**
 * The agent configuration file of the agent tests and benches: the bootstrap
 * bundle and agent.yaml written in a directory, for a TestServer and a swtpm,
 * and loaded as the agent would load it.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { agentConfigSchema, loadConfig, type AgentConfig } from '../../src/config/index.js';
import { TD } from './server-harness.js';

export interface AgentConfigFile {
  /** The Node API address (TestServer.address), or several (agent.server.address as a list). */
  readonly serverAddress: string | readonly string[];
  /** The swtpm's TCTI. */
  readonly tcti: string;
  /** PEM written to `bundle` (relative to the directory); omitted: the file is left as it is. */
  readonly bootstrapPem?: string;
  /** server.bundle (default bootstrap.pem). */
  readonly bundle?: string;
  /** The config file's name in the directory, or a path (default agent.yaml). */
  readonly file?: string;
  /** data_dir (default data). */
  readonly dataDir?: string;
  /** workload_api.socket_path (default <dir>/public/api.sock). */
  readonly socketPath?: string;
  /** tpm.event_log (default no-event-log.bin: absent, as swtpm has none). */
  readonly eventLog?: string;
  /** More keys of `tpm:`, e.g. `ak_persistent_handle: "0x81010002"`. */
  readonly tpm?: readonly string[];
  /** More keys of `agent:` as written in YAML, e.g. `log_level: debug`. */
  readonly agent?: readonly string[];
}

/** Writes the bootstrap bundle (when given) and the config file in `dir`; returns the config file's path. */
export async function writeAgentConfig(dir: string, o: AgentConfigFile): Promise<string> {
  const bundle = o.bundle ?? 'bootstrap.pem';
  if (o.bootstrapPem !== undefined) await writeFile(join(dir, bundle), o.bootstrapPem);
  const file = join(dir, o.file ?? 'agent.yaml');
  const tpm = [`tcti: "${o.tcti}"`, 'ek_kind: rsa-2048', 'ak_kind: ecc-p256', ...(o.tpm ?? []), `event_log: ${o.eventLog ?? 'no-event-log.bin'}`];
  await writeFile(
    file,
    [
      'agent:',
      `  trust_domain: ${TD}`,
      `  server: { address: ${typeof o.serverAddress === 'string' ? `"${o.serverAddress}"` : `[${o.serverAddress.map((a) => `"${a}"`).join(', ')}]`}, bundle: ${bundle} }`,
      `  data_dir: ${o.dataDir ?? 'data'}`,
      ...(o.agent ?? []).map((l) => `  ${l}`),
      `  tpm: { ${tpm.join(', ')} }`,
      `  workload_api: { socket_path: ${o.socketPath ?? join(dir, 'public', 'api.sock')} }`,
      '',
    ].join('\n'),
  );
  return file;
}

/** writeAgentConfig, then the config as the agent loads it. */
export async function agentConfig(dir: string, o: AgentConfigFile): Promise<{ file: string; config: AgentConfig }> {
  const file = await writeAgentConfig(dir, o);
  return { file, config: loadConfig(file, agentConfigSchema).agent };
}
