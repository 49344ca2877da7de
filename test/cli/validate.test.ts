/**
 * `keel server validate` / `keel agent validate`: what a start would load and
 * check, without starting; every problem with its dotted key path. The HSM
 * and the TPM are the real ones of the tests: SoftHSM and swtpm.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { main } from '../../src/cli/main.js';
import { validateAgentConfig, validateServerConfig, type ValidationReport } from '../../src/cli/validate.js';
import { repoRoot } from '../../src/proto/load.js';

let dir: string;
let tok: SoftHsmToken;

/** Runs `keel …`, capturing what it prints. */
async function keel(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
  const error = vi.spyOn(console, 'error').mockImplementation(() => undefined);
  try {
    const code = await main(argv);
    return { code, out: log.mock.calls.flat().join('\n'), err: error.mock.calls.flat().join('\n') };
  } finally {
    log.mockRestore();
    error.mockRestore();
  }
}

function write(name: string, text: string, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
}

const serverYaml = (o: { module?: string; pin?: string; policy?: string; cas?: string; extra?: string } = {}): string => `
server:
  trust_domain: example.org
  data_dir: ./data
  listen:
    node_api: 127.0.0.1:18081
    http: 127.0.0.1:18080
    admin_socket: ./private/admin.sock
    http_plaintext: true
  hsm:
    module: ${o.module ?? tok.module}
    token_label: ${tok.label}
    pin_source: file:${o.pin ?? 'hsm.pin'}
  ca:
    ttl: 7d
  attestation:
    manufacturer_cas: [${o.cas ?? 'ek-ca.pem'}]
    firmware_policies: [${o.policy ?? 'policy.yaml'}]
${o.extra ?? ''}`;

const paths = (r: ValidationReport): string[] => r.problems.map((p) => p.path);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'keel-cli-validate-'));
  tok = await createSoftHsmToken({ label: 'keel-validate' });
  process.env.SOFTHSM2_CONF = tok.conf;
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', join(dir, 'ek-ca.key'), '-out', join(dir, 'ek-ca.pem'), '-days', '3', '-subj', '/CN=test EK CA',
  ], { stdio: 'pipe' });
  copyFileSync(join(repoRoot(), 'firmware-policies', 'swtpm-dev.yaml'), join(dir, 'policy.yaml'));
  write('hsm.pin', `${tok.pin}\n`);
  write('wrong.pin', 'not-the-pin\n');
  write('world.pin', `${tok.pin}\n`, 0o644);
  write('broken-policy.yaml', 'apiVersion: keel.dev/v1\nkind: FirmwarePolicy\nname: broken\nbank: sha999\n', 0o644);
  mkdirSync(join(dir, 'private'), { mode: 0o700 });
});
afterAll(async () => {
  await tok?.destroy();
  rmSync(dir, { recursive: true, force: true });
});

describe('keel server validate', () => {
  it('a good configuration: exit 0, valid, nothing started (no data_dir made)', async () => {
    const file = write('good.yaml', serverYaml());
    const r = await keel('server', 'validate', '--config', file, '--json');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.out) as ValidationReport;
    expect(report).toMatchObject({ file, kind: 'server', valid: true, problems: [] });
    expect(() => readFileSync(join(dir, 'data'))).toThrow(/ENOENT/);
    const human = await keel('server', 'validate', '--config', file);
    expect(human.code).toBe(0);
    expect(human.out).toContain(`${file}: valid server configuration`);
  });

  it('lists every problem with its dotted path, and exits 1', async () => {
    const file = write(
      'bad.yaml',
      serverYaml({ module: join(dir, 'no-such-pkcs11.so'), pin: 'world.pin', policy: 'broken-policy.yaml', cas: 'missing-ca.pem' }),
    );
    const report = await validateServerConfig(file);
    expect(report.valid).toBe(false);
    expect(paths(report)).toEqual(
      expect.arrayContaining(['server.hsm.module', 'server.hsm.pin_source', 'server.attestation.manufacturer_cas[0]', 'server.attestation.firmware_policies[0]']),
    );
    const byPath = Object.fromEntries(report.problems.map((p) => [p.path, p.message]));
    expect(byPath['server.hsm.module']).toMatch(/no-such-pkcs11\.so does not exist/);
    expect(byPath['server.hsm.pin_source']).toMatch(/mode 0644.*chmod 600/);
    expect(byPath['server.attestation.manufacturer_cas[0]']).toMatch(/missing-ca\.pem does not exist/);
    expect(byPath['server.attestation.firmware_policies[0]']).toMatch(/broken-policy\.yaml: bank/);

    const r = await keel('server', 'validate', '--config', file);
    expect(r.code).toBe(1);
    for (const path of paths(report)) expect(r.err).toContain(`  ${path}: `);
  });

  it('schema problems are reported with their paths, as the start reports them', async () => {
    const file = write('schema.yaml', serverYaml({ extra: '  no_such_key: 1\n' }).replace('ttl: 7d', 'ttl: 1m'));
    const report = await validateServerConfig(file);
    expect(report.valid).toBe(false);
    expect(paths(report)).toEqual(expect.arrayContaining(['server.no_such_key', 'server.ca.ttl']));
  });

  it('a world-writable configuration file is refused, naming its mode', async () => {
    const file = write('world.yaml', serverYaml(), 0o666);
    const r = await keel('server', 'validate', '--config', file, '--json');
    expect(r.code).toBe(1);
    const report = JSON.parse(r.out) as ValidationReport;
    expect(report.problems).toEqual([{ path: '(file)', message: expect.stringMatching(/world-writable \(mode 0666\)/) }]);
  });

  it('--check-hsm logs in to the token; a wrong PIN is a problem at server.hsm', async () => {
    const good = await validateServerConfig(write('hsm-good.yaml', serverYaml()), { checkHsm: true });
    expect(good.problems).toEqual([]);
    expect(good.checked).toContain('HSM token opened and logged in');

    const wrongFile = write('hsm-wrong.yaml', serverYaml({ pin: 'wrong.pin' }));
    // Without --check-hsm the PIN is only read, not tried.
    expect((await validateServerConfig(wrongFile)).valid).toBe(true);
    const wrong = await validateServerConfig(wrongFile, { checkHsm: true });
    expect(wrong.problems).toEqual([{ path: 'server.hsm', message: expect.stringMatching(/HsmPinIncorrectError.*CKR_PIN_INCORRECT/) }]);
  });

  it('usage errors exit 2', async () => {
    expect((await keel('server', 'validate')).code).toBe(2);
    expect((await keel('server', 'validate', '--config', 'x', '--check-tpm')).code).toBe(2);
  });
});

describe('keel agent validate', () => {
  let sim: Swtpm;
  beforeAll(async () => {
    sim = await startSwtpm();
  });
  afterAll(async () => {
    await sim?.stop();
  });

  const agentYaml = (o: { bundle?: string; tcti?: string } = {}): string => `
agent:
  trust_domain: example.org
  server: { address: 127.0.0.1:8081, bundle: ${o.bundle ?? 'ek-ca.pem'} }
  data_dir: ./agent-data
  tpm: { tcti: "${o.tcti ?? sim.tcti}" }
  workload_api: { socket_path: ./agent-public/api.sock }
`;

  it('a good configuration with --check-tpm opens the TPM: exit 0', async () => {
    const file = write('agent-good.yaml', agentYaml());
    const r = await keel('agent', 'validate', '--config', file, '--check-tpm', '--json');
    const report = JSON.parse(r.out) as ValidationReport;
    expect(report.problems).toEqual([]);
    expect(r.code).toBe(0);
    expect(report.checked).toContain(`TPM opened (${sim.tcti})`);
  });

  it('a missing bootstrap bundle and an unreachable TPM are each reported at their key', async () => {
    const file = write('agent-bad.yaml', agentYaml({ bundle: 'no-bundle.pem', tcti: 'swtpm:host=127.0.0.1,port=1' }));
    const report = await validateAgentConfig(file, { checkTpm: true });
    expect(report.valid).toBe(false);
    expect(paths(report)).toEqual(['agent.server.bundle', 'agent.tpm.tcti']);
    expect(report.problems[0]!.message).toMatch(/no-bundle\.pem does not exist/);
    expect((await keel('agent', 'validate', '--config', file)).code).toBe(1);
  });

  it('a bundle that holds no certificate is a problem', async () => {
    write('not-a-bundle.pem', 'hello\n', 0o644);
    const report = await validateAgentConfig(write('agent-nopem.yaml', agentYaml({ bundle: 'not-a-bundle.pem' })));
    expect(report.problems).toEqual([{ path: 'agent.server.bundle', message: expect.stringMatching(/holds no PEM certificate/) }]);
  });
});
