/**
 * scripts/install.sh and packaging/systemd/*.service, checked without touching
 * the real system: the script installs into a temporary --root, and
 * systemd-analyze (verify, security --offline) reads the units from there.
 * Nothing here needs systemd to be running.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentConfigSchema, loadConfig, serverConfigSchema } from '../../src/config/index.js';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const installSh = join(repo, 'scripts', 'install.sh');
const unitSrc = join(repo, 'packaging', 'systemd');
const UNITS = ['keel-server.service', 'keel-agent.service'] as const;
const UNIT_DIR = 'usr/local/lib/systemd/system';

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
}
function install(root: string, ...args: string[]): SpawnSyncReturns<string> {
  return sh('bash', [installSh, '--root', root, ...args]);
}
function mode(path: string): string {
  return (statSync(path).mode & 0o7777).toString(8).padStart(4, '0');
}
/** Every path below `dir` with its mode (and the content of small files), for before/after comparisons. */
function snapshot(dir: string, skip: (rel: string) => boolean = () => false): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const rel = relative(dir, p);
      if (skip(rel)) continue;
      if (e.isDirectory()) {
        out[rel + '/'] = mode(p);
        walk(p);
      } else if (e.isFile()) {
        out[rel] = `${mode(p)} ${statSync(p).size < 65536 ? readFileSync(p, 'utf8') : statSync(p).size}`;
      } else {
        out[rel] = 'other';
      }
    }
  };
  walk(dir);
  return out;
}
/** systemd-analyze reads the root's own unit tree: give it the host's (Debian 12's) system units. */
function addHostSystemUnits(root: string): void {
  if (existsSync(join(root, 'usr/lib/systemd/system/sysinit.target'))) return;
  cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  if (!existsSync(join(root, 'lib'))) symlinkSync('usr/lib', join(root, 'lib'));
}
function unitSetting(unit: string, key: string): string[] {
  return readFileSync(join(unitSrc, unit), 'utf8')
    .split('\n')
    .filter((l) => l.startsWith(`${key}=`))
    .map((l) => l.slice(key.length + 1));
}

const tmpRoots: string[] = [];
function tempRoot(): string {
  const d = mkdtempSync(join(tmpdir(), 'keel-install-'));
  tmpRoots.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpRoots) rmSync(d, { recursive: true, force: true });
});

const systemdAnalyze = existsSync('/usr/bin/systemd-analyze');

describe('scripts/install.sh into a temporary root', () => {
  let root: string;
  let first: SpawnSyncReturns<string>;
  const prefix = () => join(root, 'opt/keel');

  beforeAll(() => {
    root = tempRoot();
    first = install(root);
  });

  it('installs the built tree, the wrapper, the units, configs and state directories with their modes', () => {
    expect(first.stderr).toBe('');
    expect(first.status).toBe(0);
    // The tree: runnable code, the native addon, runtime files; dev dependencies pruned.
    for (const f of ['dist/src/cli/main.js', 'native/build/Release/keel_native.node', 'package.json', 'proto', 'firmware-policies/secure-boot-required.yaml', 'node_modules/fastify', 'node_modules/better-sqlite3', 'node_modules/pkcs11js', '.keel-install']) {
      expect(existsSync(join(prefix(), f)), f).toBe(true);
    }
    for (const dev of ['vitest', 'typescript', 'tsx', 'fast-check', 'node-gyp']) {
      expect(existsSync(join(prefix(), 'node_modules', dev)), `dev dependency ${dev} left in the prefix`).toBe(false);
    }
    expect(mode(prefix())).toBe('0755');
    // No staging leftovers next to the prefix.
    expect(readdirSync(join(root, 'opt'))).toEqual(['keel']);

    // The wrapper: on PATH, executable, runs main.js of the final prefix (not of the temp root).
    const wrapper = join(root, 'usr/local/bin/keel');
    expect(mode(wrapper)).toBe('0755');
    const w = readFileSync(wrapper, 'utf8');
    expect(w.startsWith('#!/bin/sh\n')).toBe(true);
    expect(w).toMatch(/^exec \/\S*node \/opt\/keel\/dist\/src\/cli\/main\.js "\$@"$/m);
    expect(w).not.toContain(root);

    // Configuration: examples only, never a real config.
    expect(mode(join(root, 'etc/keel'))).toBe('0750');
    expect(readdirSync(join(root, 'etc/keel')).sort()).toEqual(['agent.yaml.example', 'server.yaml.example']);
    for (const f of ['agent.yaml.example', 'server.yaml.example']) expect(mode(join(root, 'etc/keel', f))).toBe('0640');

    // State.
    expect(mode(join(root, 'var/lib/keel'))).toBe('0700');
    expect(mode(join(root, 'var/lib/keel-agent'))).toBe('0700');

    // Units, byte for byte the packaged ones.
    for (const u of UNITS) {
      expect(mode(join(root, UNIT_DIR, u))).toBe('0644');
      expect(readFileSync(join(root, UNIT_DIR, u), 'utf8')).toBe(readFileSync(join(unitSrc, u), 'utf8'));
    }
  });

  it('below --root, creates no users and chowns nothing, and says what it would have done', () => {
    for (const u of ['keel', 'keel-agent']) {
      expect(first.stdout).toContain(`skip: useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ${u}\n`);
    }
    expect(first.stdout).toContain('skip: chown root:keel /etc/keel\n');
    expect(first.stdout).toContain('skip: chown keel:keel /var/lib/keel\n');
    expect(first.stdout).toContain('skip: chown keel-agent:keel-agent /var/lib/keel-agent\n');
    expect(first.stdout).toContain('skip: systemctl daemon-reload');
    expect(first.stdout).not.toMatch(/^\+ (useradd|systemctl|chown \S+ \/etc)/m);
  });

  it('the installed tree runs on its own: CLI, native addon and every production import from the prefix', () => {
    for (const [cmd, usage] of [['server run', 'usage: keel server run --config FILE'], ['agent run', 'usage: keel agent run --config FILE']] as const) {
      const r = sh('node', [join(prefix(), 'dist/src/cli/main.js'), ...cmd.split(' '), '--help']);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain(usage);
    }
    const p = join(prefix(), 'dist/src/');
    const r = sh('node', [
      '--input-type=module',
      '-e',
      `const a = await import(${JSON.stringify(p + 'os/native-addon.js')}); if (typeof a.nativeAddon() !== 'object') process.exit(3);
       await import(${JSON.stringify(p + 'server/server.js')}); await import(${JSON.stringify(p + 'agent/agent.js')});
       await import(${JSON.stringify(p + 'cli/admin/index.js')}); console.log('ok');`,
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('ok');
  });

  it('the sample configurations are valid and agree with the units', () => {
    const server = loadConfig(join(root, 'etc/keel/server.yaml.example'), serverConfigSchema).server;
    const agent = loadConfig(join(root, 'etc/keel/agent.yaml.example'), agentConfigSchema).agent;
    // data_dir is the unit's StateDirectory=, sockets live in its RuntimeDirectory=.
    expect(server.data_dir).toBe(`/var/lib/${unitSetting('keel-server.service', 'StateDirectory')[0]}`);
    expect(agent.data_dir).toBe(`/var/lib/${unitSetting('keel-agent.service', 'StateDirectory')[0]}`);
    expect(dirname(server.listen.admin_socket)).toBe(`/run/${unitSetting('keel-server.service', 'RuntimeDirectory')[0]}`);
    expect(dirname(agent.workload_api.socket_path)).toBe(`/run/${unitSetting('keel-agent.service', 'RuntimeDirectory')[0]}`);
    // The PIN comes from the credential the unit loads.
    const [cred] = unitSetting('keel-server.service', 'LoadCredential');
    expect(cred).toBe('hsm.pin:/etc/keel/hsm.pin');
    expect(JSON.stringify(server.hsm)).toContain('/run/credentials/keel-server.service/hsm.pin');
    // ExecStart is the CLI's real command line.
    expect(unitSetting('keel-server.service', 'ExecStart')).toEqual(['/usr/local/bin/keel server run --config /etc/keel/server.yaml']);
    expect(unitSetting('keel-agent.service', 'ExecStart')).toEqual(['/usr/local/bin/keel agent run --config /etc/keel/agent.yaml']);
  });

  it('the socket directories systemd makes pass the agent\'s and the server\'s own checks', () => {
    // The agent's directory: its own, 0755 (workloads traverse it), never group/other-writable.
    expect(unitSetting('keel-agent.service', 'RuntimeDirectoryMode')).toEqual(['0755']);
    // The admin socket's directory must be 0700 and the server's (src/server/http/admin-socket.ts).
    expect(unitSetting('keel-server.service', 'RuntimeDirectoryMode')).toEqual(['0700']);
    // Neither unit may own /run/keel itself: the other one's check would see a foreign owner.
    for (const u of UNITS) expect(unitSetting(u, 'RuntimeDirectory')[0]).toMatch(/^keel\/[a-z]+$/);
  });

  it('a second run gives the same layout, replaces the tree, and keeps an edited configuration', () => {
    writeFileSync(join(root, 'etc/keel/server.yaml'), 'server: { trust_domain: edited.example }\n', { mode: 0o640 });
    writeFileSync(join(root, 'etc/keel/agent.yaml'), 'agent: { trust_domain: edited.example }\n', { mode: 0o600 });
    writeFileSync(join(prefix(), 'stale-file-from-an-old-version'), 'x');
    const skipTree = (rel: string): boolean => rel.startsWith('opt/keel/') || rel.startsWith('usr/lib/') || rel === 'lib';
    const before = snapshot(root, skipTree);
    const again = install(root);
    expect(again.stderr).toBe('');
    expect(again.status).toBe(0);
    expect(snapshot(root, skipTree)).toEqual(before);
    expect(readFileSync(join(root, 'etc/keel/server.yaml'), 'utf8')).toBe('server: { trust_domain: edited.example }\n');
    expect(mode(join(root, 'etc/keel/agent.yaml'))).toBe('0600');
    expect(again.stdout).toContain('keeping /etc/keel/server.yaml');
    // An upgrade is a fresh tree: what an old version left is gone.
    expect(existsSync(join(prefix(), 'stale-file-from-an-old-version'))).toBe(false);
    expect(existsSync(join(prefix(), 'dist/src/cli/main.js'))).toBe(true);
    expect(readdirSync(join(root, 'opt'))).toEqual(['keel']);
  });

  it.skipIf(!systemdAnalyze)('systemd-analyze verify finds nothing to say about either unit', () => {
    addHostSystemUnits(root);
    const r = sh('systemd-analyze', ['verify', `--root=${root}`, ...UNITS]);
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it.skipIf(!systemdAnalyze)('systemd-analyze verify does complain about a broken unit (the check can fail)', () => {
    const bad = tempRoot();
    addHostSystemUnits(bad);
    mkdirSync(join(bad, UNIT_DIR), { recursive: true });
    // Our server unit with a misspelt hardening key and no keel binary in this root.
    writeFileSync(join(bad, UNIT_DIR, 'keel-server.service'), readFileSync(join(unitSrc, 'keel-server.service'), 'utf8').replace('ProtectClock=yes', 'ProtectClok=yes'));
    const r = sh('systemd-analyze', ['verify', `--root=${bad}`, 'keel-server.service']);
    expect(r.stderr).toContain("Unknown key 'ProtectClok'");
    expect(r.stderr).toContain('/usr/local/bin/keel is not executable');
  });

  // Overall exposure (0 = locked down, 10 = unprotected) and the exact list of
  // checks each unit fails: a new relaxation fails the test even when the
  // score stays under the bound. Justification of every entry: docs/install.md.
  const accepted: Record<(typeof UNITS)[number], { max: number; failing: string[] }> = {
    // 1.2 today. Network access is its job; MemoryDenyWriteExecute breaks V8.
    'keel-server.service': {
      max: 1.5,
      failing: [
        'DeviceAllow=',
        'IPAddressDeny=',
        'MemoryDenyWriteExecute=',
        'PrivateNetwork=',
        'PrivateUsers=',
        'RestrictAddressFamilies=~AF_(INET|INET6)',
        'RestrictAddressFamilies=~AF_UNIX',
        'RootDirectory=/RootImage=',
      ],
    },
    // 2.2 today: on top of the server's, the TPM device, the tss group, and the
    // ptrace-read / DAC-read capabilities and the full /proc that workload
    // attestation of other users' processes needs.
    'keel-agent.service': {
      max: 2.5,
      failing: [
        'AmbientCapabilities=',
        'CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)',
        'CapabilityBoundingSet=~CAP_SYS_PTRACE',
        'DeviceAllow=',
        'IPAddressDeny=',
        'MemoryDenyWriteExecute=',
        'PrivateDevices=',
        'PrivateNetwork=',
        'PrivateUsers=',
        'ProcSubset=',
        'ProtectProc=',
        'RestrictAddressFamilies=~AF_(INET|INET6)',
        'RestrictAddressFamilies=~AF_UNIX',
        'RootDirectory=/RootImage=',
        'SupplementaryGroups=',
      ],
    },
  };
  for (const unit of UNITS) {
    it.skipIf(!systemdAnalyze)(`systemd-analyze security --offline: ${unit} stays at its exposure and fails only the accepted checks`, () => {
      addHostSystemUnits(root);
      const r = sh('systemd-analyze', ['security', '--offline=yes', `--root=${root}`, '--no-pager', unit], { SYSTEMD_COLORS: '0' });
      const out = r.stdout + r.stderr;
      const m = /Overall exposure level for (\S+): (\d+\.\d)/.exec(out);
      expect(m, out).not.toBeNull();
      expect(m![1]).toBe(unit);
      const score = Number(m![2]);
      expect(score).toBeLessThanOrEqual(accepted[unit].max);
      const failing = out
        .split('\n')
        .filter((l) => l.startsWith('✗ '))
        .map((l) => l.slice(2).split(/\s+/)[0]!)
        .sort();
      expect(failing).toEqual([...accepted[unit].failing].sort());
    });
  }

  it('neither unit sets MemoryDenyWriteExecute, and no unit runs as root', () => {
    for (const u of UNITS) {
      expect(unitSetting(u, 'MemoryDenyWriteExecute')).toEqual([]);
      expect(unitSetting(u, 'User')[0]).toMatch(/^keel(-agent)?$/);
      expect(unitSetting(u, 'NoNewPrivileges')).toEqual(['yes']);
    }
    expect(unitSetting('keel-server.service', 'CapabilityBoundingSet')).toEqual(['']);
    expect(unitSetting('keel-agent.service', 'CapabilityBoundingSet')).toEqual(['CAP_SYS_PTRACE CAP_DAC_READ_SEARCH']);
    expect(unitSetting('keel-agent.service', 'DeviceAllow')).toEqual(['/dev/tpmrm0 rw']);
  });

  it('uninstall removes the units, the wrapper and the prefix, keeps configuration and state; --purge removes those too', () => {
    const r = install(root, '--uninstall');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    for (const u of UNITS) expect(existsSync(join(root, UNIT_DIR, u))).toBe(false);
    expect(existsSync(join(root, 'usr/local/bin/keel'))).toBe(false);
    expect(existsSync(prefix())).toBe(false);
    expect(readFileSync(join(root, 'etc/keel/server.yaml'), 'utf8')).toBe('server: { trust_domain: edited.example }\n');
    expect(readdirSync(join(root, 'etc/keel')).sort()).toEqual(['agent.yaml', 'agent.yaml.example', 'server.yaml', 'server.yaml.example']);
    expect(mode(join(root, 'var/lib/keel'))).toBe('0700');
    expect(mode(join(root, 'var/lib/keel-agent'))).toBe('0700');

    // Again: nothing left to remove, still fine.
    expect(install(root, '--uninstall').status).toBe(0);

    const purge = install(root, '--uninstall', '--purge');
    expect(purge.status).toBe(0);
    for (const d of ['etc/keel', 'var/lib/keel', 'var/lib/keel-agent']) expect(existsSync(join(root, d)), d).toBe(false);
    expect(purge.stdout).toContain('skip: userdel keel\n');
    // What is not keel's is left alone.
    expect(existsSync(join(root, 'usr/lib/systemd/system/sysinit.target'))).toBe(true);
  });
});

describe('scripts/install.sh refuses and dry-runs', () => {
  it('--dry-run changes nothing and prints the plan', () => {
    const root = tempRoot();
    const r = install(root, '--dry-run');
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(root)).toEqual([]);
    expect(r.stdout).toMatch(/^\+ mv \S+\/opt\/keel\.new\.\d+ \S+\/opt\/keel$/m);
    expect(r.stdout).toContain(`+ install -m 0644 ${unitSrc}/keel-agent.service ${root}/${UNIT_DIR}/keel-agent.service`);
  });

  it('does not replace a directory or a keel on PATH that are not its own', () => {
    const root = tempRoot();
    mkdirSync(join(root, 'opt/keel'), { recursive: true });
    writeFileSync(join(root, 'opt/keel/precious'), 'x');
    const r = install(root);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('was not installed by keel');
    expect(readdirSync(join(root, 'opt/keel'))).toEqual(['precious']);
    // Uninstall leaves it too.
    expect(install(root, '--uninstall').status).toBe(0);
    expect(readdirSync(join(root, 'opt/keel'))).toEqual(['precious']);

    const other = tempRoot();
    mkdirSync(join(other, 'usr/local/bin'), { recursive: true });
    writeFileSync(join(other, 'usr/local/bin/keel'), '#!/bin/sh\necho someone else\n', { mode: 0o755 });
    const r2 = install(other);
    expect(r2.status).not.toBe(0);
    expect(r2.stderr).toContain('is not keel\'s wrapper');
    expect(readFileSync(join(other, 'usr/local/bin/keel'), 'utf8')).toBe('#!/bin/sh\necho someone else\n');
  });

  it('refuses a --prefix that is a shared directory', () => {
    const r = install(tempRoot(), '--prefix', '/usr/local');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('refusing --prefix /usr/local');
  });
});

// systemd's MemoryDenyWriteExecute=yes is a seccomp filter; fixtures/mdwe.py
// loads the same rules (with python3-seccomp) and runs node under them.
const seccompPy = sh('/usr/bin/python3', ['-c', 'import seccomp']).status === 0;
describe.skipIf(!seccompPy)('MemoryDenyWriteExecute and node', () => {
  const mdwe = join(repo, 'test', 'packaging', 'fixtures', 'mdwe.py');
  const jitWork = 'let s = 0; for (let i = 0; i < 1e7; i++) s += i; console.log("ran", s)';
  it('node with its JIT dies under the filter (why the units leave it off)', () => {
    const r = sh('/usr/bin/python3', [mdwe, process.execPath, '-e', jitWork]);
    expect(r.status === 0 && r.stdout.includes('ran')).toBe(false);
    expect(r.stderr).toMatch(/SetPermissions|Check failed/);
  });
  it('the filter itself is not what breaks it: node --jitless runs under it', () => {
    const r = sh('/usr/bin/python3', [mdwe, process.execPath, '--jitless', '-e', jitWork]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('ran 49999995000000');
  });
});
