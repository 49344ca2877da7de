/**
 * A configuration file decides the CA, the HSM and the policies: one that
 * someone else could have changed is refused at load time, naming the file
 * and its mode (issue 12).
 */
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentConfigSchema, configFileRefusal, ConfigError, loadConfig } from '../../src/config/index.js';

const AGENT_YAML = `
agent:
  trust_domain: example.org
  server: { address: keel.example.org:8081, bundle: bootstrap.pem }
  data_dir: /var/lib/keel-agent
`;

let dir: string;
let n = 0;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keel-config-perms-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A config file with exactly `mode` (chmod, so the umask plays no part). */
function configFile(mode: number): string {
  const p = join(dir, `agent-${n++}.yaml`);
  writeFileSync(p, AGENT_YAML);
  chmodSync(p, mode);
  return p;
}

function refusalOf(file: string): ConfigError {
  try {
    loadConfig(file, agentConfigSchema);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return e as ConfigError;
  }
  throw new Error(`${file} was accepted`);
}

describe('configuration file permissions', () => {
  it('refuses a world-writable (0666) file, naming the file and the mode', () => {
    const file = configFile(0o666);
    const e = refusalOf(file);
    expect(e.file).toBe(file);
    expect(e.issues).toHaveLength(1);
    expect(e.issues[0]!.path).toBe('(file)');
    expect(e.issues[0]!.message).toMatch(/world-writable \(mode 0666\)/);
    expect(e.message).toContain(file);
  });

  it('refuses a group-writable (0620) file', () => {
    const e = refusalOf(configFile(0o620));
    expect(e.issues[0]!.message).toMatch(/group-writable \(mode 0620\)/);
  });

  it('accepts 0600 and 0644 (readable by others is fine, changeable is not)', () => {
    expect(loadConfig(configFile(0o600), agentConfigSchema).agent.trust_domain.name).toBe('example.org');
    expect(loadConfig(configFile(0o644), agentConfigSchema).agent.trust_domain.name).toBe('example.org');
  });

  it.skipIf(process.getuid?.() !== 0)('refuses a file owned by another non-root user (run as root)', () => {
    const file = configFile(0o600);
    chownSync(file, 65534, 65534);
    const e = refusalOf(file);
    expect(e.issues[0]!.message).toMatch(/owned by uid 65534/);
  });

  it('the rule: owner must be this user or root; no group/other write bits', () => {
    const reg = 0o100000;
    expect(configFileRefusal({ mode: reg | 0o600, uid: 1000 }, 1000)).toBeUndefined();
    expect(configFileRefusal({ mode: reg | 0o600, uid: 0 }, 1000)).toBeUndefined();
    expect(configFileRefusal({ mode: reg | 0o600, uid: 1001 }, 1000)).toMatch(/owned by uid 1001/);
    expect(configFileRefusal({ mode: reg | 0o602, uid: 1000 }, 1000)).toMatch(/world-writable \(mode 0602\)/);
    expect(configFileRefusal({ mode: 0o040000 | 0o700, uid: 1000 }, 1000)).toBe('not a regular file');
  });
});
