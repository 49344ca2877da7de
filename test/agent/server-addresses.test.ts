/** ServerAddresses (pure): which server an agent with several goes to after a failure, and the config forms. */
import { describe, expect, it } from 'vitest';
import { formatHostPort, ServerAddresses } from '../../src/agent/server-addresses.js';
import { agentConfigSchema, ConfigError, parseConfigText } from '../../src/config/index.js';

describe('ServerAddresses', () => {
  it('moves to the next address after a failure of the current one, round the list', () => {
    const s = new ServerAddresses(['a:1', 'b:2', 'c:3']);
    expect(s.current).toBe('a:1');
    expect(s.failedOver('a:1')).toEqual({ from: 'a:1', to: 'b:2' });
    expect(s.failedOver('b:2')).toEqual({ from: 'b:2', to: 'c:3' });
    expect(s.failedOver('c:3')).toEqual({ from: 'c:3', to: 'a:1' });
  });
  it('a late failure of an address no longer current moves nothing (two channels failing at once move one step)', () => {
    const s = new ServerAddresses(['a:1', 'b:2']);
    expect(s.failedOver('a:1')).toBeDefined();
    expect(s.failedOver('a:1')).toBeUndefined();
    expect(s.current).toBe('b:2');
  });
  it('with one address there is nowhere to go', () => {
    const s = new ServerAddresses(['a:1']);
    expect(s.failedOver('a:1')).toBeUndefined();
    expect(s.current).toBe('a:1');
    expect(() => new ServerAddresses([])).toThrow(RangeError);
  });
  it('formats IPv6 literals in brackets', () => {
    expect(formatHostPort({ host: '::1', port: 8081 })).toBe('[::1]:8081');
    expect(formatHostPort({ host: 'keel.example.org', port: 8081 })).toBe('keel.example.org:8081');
  });
});

describe('agent.server.address', () => {
  const parse = (address: string) =>
    parseConfigText(
      `agent:\n  trust_domain: example.org\n  server: { address: ${address}, bundle: /b.pem }\n  data_dir: /d\n  tpm: { tcti: "swtpm:port=1" }\n`,
      agentConfigSchema,
      { file: '/etc/keel/agent.yaml', baseDir: '/etc/keel' },
    ).agent.server.address;
  it('takes one host:port or a list of them; both read as a list', () => {
    expect(parse('"keel:8081"')).toEqual([{ host: 'keel', port: 8081 }]);
    expect(parse('["keel-a:8081", "keel-b:8081"]')).toEqual([
      { host: 'keel-a', port: 8081 },
      { host: 'keel-b', port: 8081 },
    ]);
  });
  it('refuses an empty list and a bad entry, naming the key', () => {
    for (const bad of ['[]', '["keel-a:8081", "no-port"]']) {
      let err: unknown;
      try {
        parse(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).message).toMatch(/agent\.server\.address/);
    }
  });
});
