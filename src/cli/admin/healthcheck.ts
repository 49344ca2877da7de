/** `keel healthcheck`: asks the server over its admin socket whether it is ready (or, --shallow, alive). */
import type { Command } from '../command.js';
import { parseFlags } from '../command.js';
import { AdminApiError } from './client.js';
import { clientFor } from './common.js';
import { processIo, type CliIo } from './io.js';

export function healthcheckCommand(io: CliIo = processIo): Command {
  return {
    usage: '[--socket PATH] [--shallow] [--verbose]',
    description: 'Exits 0 when the server is ready (store reachable, CA key active), 1 otherwise. --shallow only checks that it answers.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { socket: { type: 'string' }, shallow: { type: 'boolean' }, verbose: { type: 'boolean' } });
      try {
        const r = await clientFor(v).send('GET', v.shallow ? '/live' : '/ready');
        if (v.verbose) io.err(r.text);
        io.out('Server is healthy.');
        return 0;
      } catch (e) {
        const why = e instanceof AdminApiError ? (e.problem.detail ?? e.message) : (e as Error).message;
        io.err(`Server is unhealthy: ${why}`);
        return 1;
      }
    },
  };
}
