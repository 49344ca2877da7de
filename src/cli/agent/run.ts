/** `keel agent run --config FILE`: the agent process, until SIGTERM or SIGINT. */
import { createLogger } from '../../log/index.js';
import { startAgent } from '../../agent/agent.js';
import { CliError, parseFlags, type Command } from '../command.js';
import { configForCommand, loadAgentConfig } from '../config-file.js';

export const agentRunCommand: Command = {
  usage: '--config FILE',
  description: 'Runs the keel agent: attests the node with its TPM, keeps its SVIDs and serves the SPIFFE Workload API until SIGTERM.',
  async run(argv) {
    const { values: v } = parseFlags(argv, { config: { type: 'string' } });
    if (!v.config) throw new CliError('--config is required', 2);
    const file = v.config;
    const config = configForCommand(() => loadAgentConfig(file));
    const log = createLogger({ level: config.log_level }, { service: 'keel-agent' });
    const abort = new AbortController();
    let signalled: (() => void) | undefined;
    const stopRequested = new Promise<void>((resolve) => (signalled = resolve));
    const onSignal = (sig: NodeJS.Signals): void => {
      log.info('signal received', { signal: sig });
      abort.abort();
      signalled!();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    try {
      const agent = await startAgent({ config, logger: log, signal: abort.signal });
      log.info('agent running', { agentId: agent.agentId, socketPath: agent.socketPath });
      await stopRequested;
      await agent.stop();
      return 0;
    } catch (e) {
      if (abort.signal.aborted) return 0;
      log.error('agent failed', { err: e });
      throw e;
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    }
  },
};
