/** `keel server run --config FILE`: the server process. */
import { createLogger } from '../log/index.js';
import { startServer } from '../server/server.js';
import { CliError, parseFlags, type Command } from './command.js';
import { configForCommand, loadServerConfig } from './config-file.js';

/** Resolves on the first SIGTERM or SIGINT; a second one forces the exit. */
export function untilSignal(onSecond: () => void): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    let seen = false;
    const handler = (sig: NodeJS.Signals): void => {
      if (seen) onSecond();
      seen = true;
      resolve(sig);
    };
    process.on('SIGTERM', handler);
    process.on('SIGINT', handler);
  });
}

export const serverRun: Command = {
  usage: '--config FILE',
  description: 'Runs the keel server: CA in the HSM, node attestation, Node API and HTTP API. Stops cleanly on SIGTERM.',
  async run(argv) {
    const { values } = parseFlags(argv, { config: { type: 'string', short: 'c' } });
    if (!values.config) throw new CliError('--config FILE is required', 2);
    const file = values.config;
    const config = configForCommand(() => loadServerConfig(file));
    const logger = createLogger({ level: config.log_level });
    const server = await startServer(config, logger);
    const sig = await untilSignal(() => {
      logger.warn('second signal: exiting without waiting');
      process.exit(1);
    });
    logger.info('stopping', { signal: sig });
    await server.close();
    logger.info('stopped');
    return 0;
  },
};
