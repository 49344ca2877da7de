/** `keel agent healthcheck`: whether the agent's Workload API answers. */
import { timeoutOf } from './api.js';
import * as grpc from '@grpc/grpc-js';
import { parseFlags, type Command } from '../command.js';
import { processIo, type CliIo } from '../admin/io.js';
import { describeRpcError, WorkloadApiClient, workloadTarget } from './workload-client.js';

export function agentHealthcheckCommand(io: CliIo = processIo): Command {
  return {
    usage: '[--socket PATH] [--timeout 5s] [--verbose]',
    description:
      'Exits 0 when the agent answers on its Workload API socket (with bundles, or with PermissionDenied to a caller it has no identity for), 1 otherwise.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { socket: { type: 'string' }, timeout: { type: 'string' }, verbose: { type: 'boolean' } });
      const timeoutMs = timeoutOf(v.timeout, 5000);
      const client = new WorkloadApiClient(workloadTarget(v.socket));
      try {
        await WorkloadApiClient.first(client.watchX509Bundles(), timeoutMs);
        if (v.verbose) io.err('the agent served the trust bundle');
      } catch (e) {
        // PermissionDenied is an answer: the agent is up and judged the caller.
        if ((e as grpc.ServiceError).code !== grpc.status.PERMISSION_DENIED) {
          io.err(`Agent is unhealthy: ${describeRpcError(e)}`);
          return 1;
        }
        if (v.verbose) io.err('the agent answered PermissionDenied (this process holds no identity)');
      } finally {
        client.close();
      }
      io.out('Agent is healthy.');
      return 0;
    },
  };
}
