/** Where the `keel agent api` commands look for the Workload API. */
import { describe, expect, it } from 'vitest';
import { workloadTarget } from '../../src/cli/agent/index.js';
import { CliError } from '../../src/cli/command.js';
import { DEFAULT_WORKLOAD_API_SOCKET } from '../../src/config/index.js';

describe('workloadTarget', () => {
  it('takes --socket first, then SPIFFE_ENDPOINT_SOCKET, then the default', () => {
    expect(workloadTarget('/run/a.sock', { SPIFFE_ENDPOINT_SOCKET: 'unix:///b.sock' })).toBe('unix:///run/a.sock');
    expect(workloadTarget('unix:///run/a.sock', {})).toBe('unix:///run/a.sock');
    expect(workloadTarget(undefined, { SPIFFE_ENDPOINT_SOCKET: 'unix:///b.sock' })).toBe('unix:///b.sock');
    expect(workloadTarget(undefined, { SPIFFE_ENDPOINT_SOCKET: 'tcp://127.0.0.1:8000' })).toBe('127.0.0.1:8000');
    expect(workloadTarget(undefined, {})).toBe(`unix://${DEFAULT_WORKLOAD_API_SOCKET}`);
  });

  it('refuses addresses that are not unix:///absolute or tcp://IP:port, naming where they came from', () => {
    for (const bad of ['unix://relative/x', 'unix:/x', 'tcp://host.example:80', 'http://x', 'relative.sock']) {
      const e = (() => {
        try {
          workloadTarget(undefined, { SPIFFE_ENDPOINT_SOCKET: bad });
        } catch (err) {
          return err;
        }
      })();
      expect(e).toBeInstanceOf(CliError);
      expect((e as Error).message).toContain('SPIFFE_ENDPOINT_SOCKET');
    }
  });
});
