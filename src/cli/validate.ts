/**
 * `keel server validate` and `keel agent validate`: everything a start would
 * load and check, without starting. The configuration file is loaded by the
 * same code as `run` (config-file.ts); then every file it names is read and
 * parsed as the start reads it, and, when asked, the HSM token is opened and
 * logged in to (`--check-hsm`) or the TPM is opened (`--check-tpm`).
 *
 * Every problem is reported with the dotted path of the key that led to it.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { accessSync, constants as fsConstants, readFileSync, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError, type AgentConfig, type ConfigIssue, type ServerConfig } from '../config/index.js';
import { CliError, parseFlags, type Command } from './command.js';
import { loadAgentConfig, loadServerConfig } from './config-file.js';
import { pemToDers } from '../server/ca/ca-certificate.js';

export interface ValidationReport {
  readonly file: string;
  readonly kind: 'server' | 'agent';
  readonly valid: boolean;
  /** What makes a start fail, each with the dotted key path. */
  readonly problems: ConfigIssue[];
  /** What this check could not decide here (an environment variable of the service, say). */
  readonly warnings: ConfigIssue[];
  /** What was checked, in order. */
  readonly checked: string[];
}

class Report {
  readonly problems: ConfigIssue[] = [];
  readonly warnings: ConfigIssue[] = [];
  readonly checked: string[] = [];
  problem(path: string, message: string): void {
    this.problems.push({ path, message });
  }
  warn(path: string, message: string): void {
    this.warnings.push({ path, message });
  }
  done(file: string, kind: 'server' | 'agent'): ValidationReport {
    return { file, kind, valid: this.problems.length === 0, problems: this.problems, warnings: this.warnings, checked: this.checked };
  }
}

const errText = (e: unknown): string => {
  const err = e as NodeJS.ErrnoException;
  if (err?.code && typeof err.code === 'string' && err.syscall) return `${err.code} (${err.message.replace(/^[A-Z]+: /, '').split(',')[0]})`;
  return err instanceof Error ? err.message : String(e);
};

function statOf(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

/** The file at `path` exists, is a regular file and this user can read it; its content, or undefined after a problem. */
function readable(r: Report, key: string, path: string): Buffer | undefined {
  const st = statOf(path);
  if (!st) {
    r.problem(key, `${path} does not exist`);
    return undefined;
  }
  if (!st.isFile()) {
    r.problem(key, `${path} is not a regular file`);
    return undefined;
  }
  try {
    return readFileSync(path);
  } catch (e) {
    r.problem(key, `cannot read ${path}: ${errText(e)}`);
    return undefined;
  }
}

/** PEM certificates in a file, each parsed. */
function certificates(r: Report, key: string, path: string): void {
  const buf = readable(r, key, path);
  if (!buf) return;
  const ders = pemToDers(buf.toString('utf8'));
  if (ders.length === 0) {
    r.problem(key, `${path} holds no PEM certificate`);
    return;
  }
  ders.forEach((der, i) => {
    try {
      new X509Certificate(der);
    } catch (e) {
      r.problem(key, `${path}: certificate ${i + 1} does not parse: ${errText(e)}`);
    }
  });
}

function privateKey(r: Report, key: string, path: string): void {
  const buf = readable(r, key, path);
  if (!buf) return;
  try {
    createPrivateKey(buf);
  } catch (e) {
    r.problem(key, `${path} holds no private key keel can use: ${errText(e)}`);
  } finally {
    buf.fill(0);
  }
}

/** A directory that is there (or will be made by the start, when `creatable`). */
function directory(r: Report, key: string, path: string, creatable: boolean): void {
  const st = statOf(path);
  if (st) {
    if (!st.isDirectory()) r.problem(key, `${path} is not a directory`);
    return;
  }
  if (!creatable) {
    r.problem(key, `${path} does not exist`);
    return;
  }
  // mkdir -p: the nearest existing ancestor must be a directory this user can write.
  let dir = dirname(path);
  while (!statOf(dir) && dirname(dir) !== dir) dir = dirname(dir);
  const anc = statOf(dir);
  if (!anc?.isDirectory()) r.problem(key, `${path} cannot be created: ${dir} is not a directory`);
  else {
    try {
      accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
    } catch {
      r.problem(key, `${path} cannot be created: ${dir} is not writable by this user`);
    }
  }
}

function loadStep<T>(r: Report, load: () => T): T | undefined {
  try {
    const config = load();
    r.checked.push('configuration file (permissions, schema)');
    return config;
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    r.problems.push(...e.issues);
    return undefined;
  }
}

export interface ServerValidateOptions {
  /** Open the token and log in (reads the PIN as the server would). */
  readonly checkHsm?: boolean;
}

/** Everything `keel server run` would check before it listens, without starting anything. */
export async function validateServerConfig(file: string, options: ServerValidateOptions = {}): Promise<ValidationReport> {
  const r = new Report();
  const config = loadStep(r, () => loadServerConfig(file));
  if (config) await checkServer(r, config, options);
  return r.done(resolve(file), 'server');
}

async function checkServer(r: Report, c: ServerConfig, options: ServerValidateOptions): Promise<void> {
  const { loadPolicies, loadPolicy, PolicyError } = await import('../policy/index.js');
  const { readPinSync, PinSourceError } = await import('../hsm/index.js');

  directory(r, 'server.data_dir', c.data_dir, true);

  // The HSM: module and PIN source.
  const mod = statOf(c.hsm.module);
  if (!mod) r.problem('server.hsm.module', `${c.hsm.module} does not exist`);
  else if (!mod.isFile()) r.problem('server.hsm.module', `${c.hsm.module} is not a regular file`);
  else {
    try {
      accessSync(c.hsm.module, fsConstants.R_OK);
    } catch {
      r.problem('server.hsm.module', `${c.hsm.module} is not readable by this user`);
    }
  }
  const pin = c.hsm.pin_source;
  if (pin.kind === 'file') {
    try {
      // The hsm layer's own read, with its mode rule; the PIN is dropped at once.
      readPinSync({ file: pin.path });
    } catch (e) {
      if (!(e instanceof PinSourceError)) throw e;
      r.problem('server.hsm.pin_source', e.message);
    }
  } else if (!process.env[pin.name]) {
    const msg = `environment variable ${pin.name} is not set here; the server's environment must set it`;
    if (options.checkHsm) r.problem('server.hsm.pin_source', msg);
    else r.warn('server.hsm.pin_source', msg);
  }
  r.checked.push('HSM module and PIN source');

  // The store.
  if (c.store.kind === 'sqlite') {
    const st = statOf(c.store.path);
    const key = 'server.store';
    if (st) {
      if (!st.isFile()) r.problem(key, `${c.store.path} is not a regular file`);
      else {
        try {
          accessSync(c.store.path, fsConstants.R_OK | fsConstants.W_OK);
        } catch {
          r.problem(key, `${c.store.path} is not readable and writable by this user`);
        }
      }
    } else if (dirname(c.store.path) !== c.data_dir) {
      directory(r, key, dirname(c.store.path), false);
    }
  } else {
    const pg = c.store.connection;
    if ('socketDir' in pg && pg.socketDir !== undefined) directory(r, 'server.store.postgres.socket_dir', pg.socketDir, false);
    const password = 'password' in pg ? pg.password : undefined;
    if (password?.file !== undefined) readable(r, 'server.store.postgres.password_file', password.file)?.fill(0);
    else if (password?.env !== undefined && !process.env[password.env]) {
      r.warn('server.store.postgres.password_env', `environment variable ${password.env} is not set here; the server's environment must set it`);
    }
    if (pg.caFile !== undefined) certificates(r, 'server.store.postgres.ca_file', pg.caFile);
  }
  r.checked.push('store');

  // Attestation: manufacturer CAs and firmware policies.
  c.attestation.manufacturer_cas.forEach((p, i) => certificates(r, `server.attestation.manufacturer_cas[${i}]`, p));
  const policies = c.attestation.firmware_policies;
  if (policies.length === 0) {
    r.problem('server.attestation.firmware_policies', 'no firmware policy is configured, so no node could attest');
  }
  let policiesOk = true;
  policies.forEach((p, i) => {
    try {
      loadPolicy(p);
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      policiesOk = false;
      for (const issue of e.issues) r.problem(`server.attestation.firmware_policies[${i}]`, `${e.origin}: ${issue.path}: ${issue.message}`);
    }
  });
  if (policiesOk && policies.length > 0) {
    // What the start does with them together (a name used twice, say).
    try {
      loadPolicies(policies);
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
      for (const issue of e.issues) r.problem('server.attestation.firmware_policies', `${e.origin}: ${issue.path}: ${issue.message}`);
    }
  }
  r.checked.push(`${c.attestation.manufacturer_cas.length} manufacturer CA file(s), ${policies.length} firmware polic${policies.length === 1 ? 'y' : 'ies'}`);

  // The CA's upstream and the public listener's certificate.
  if (c.ca.upstream) {
    certificates(r, 'server.ca.upstream.cert', c.ca.upstream.cert);
    if (c.ca.upstream.key.kind === 'file') privateKey(r, 'server.ca.upstream.key_file', c.ca.upstream.key.path);
  }
  if (c.listen.http_tls) {
    certificates(r, 'server.listen.http_tls.cert', c.listen.http_tls.cert);
    privateKey(r, 'server.listen.http_tls.key', c.listen.http_tls.key);
  }
  directory(r, 'server.listen.admin_socket', dirname(c.listen.admin_socket), true);
  r.checked.push('CA and listener files');

  if (options.checkHsm && !r.problems.some((p) => p.path.startsWith('server.hsm'))) {
    const { Hsm } = await import('../hsm/index.js');
    const { hsmConfigOf } = await import('../server/server.js');
    let hsm;
    try {
      hsm = await Hsm.open(hsmConfigOf(c));
      if (c.ca.upstream?.key.kind === 'hsm') {
        const label = c.ca.upstream.key.label;
        if (!(await hsm.findKey({ label }))) r.problem('server.ca.upstream.hsm_key_label', `no key labelled ${JSON.stringify(label)} in the HSM`);
      }
      r.checked.push('HSM token opened and logged in');
    } catch (e) {
      r.problem('server.hsm', `${(e as Error).name}: ${(e as Error).message}`);
    } finally {
      await hsm?.close();
    }
  }
}

export interface AgentValidateOptions {
  /** Open the TPM through the configured TCTI. */
  readonly checkTpm?: boolean;
}

/** Everything `keel agent run` would check before it talks to the TPM and the server, without starting. */
export async function validateAgentConfig(file: string, options: AgentValidateOptions = {}): Promise<ValidationReport> {
  const r = new Report();
  const config = loadStep(r, () => loadAgentConfig(file));
  if (config) await checkAgent(r, config, options);
  return r.done(resolve(file), 'agent');
}

async function checkAgent(r: Report, c: AgentConfig, options: AgentValidateOptions): Promise<void> {
  directory(r, 'agent.data_dir', c.data_dir, true);
  certificates(r, 'agent.server.bundle', c.server.bundle);
  if (c.tpm.event_log !== undefined) {
    // Absent, quotes go without an event log (as on swtpm); present, it must be readable.
    if (statOf(c.tpm.event_log)) readable(r, 'agent.tpm.event_log', c.tpm.event_log);
    else r.warn('agent.tpm.event_log', `${c.tpm.event_log} does not exist: quotes are sent without an event log`);
  }
  directory(r, 'agent.workload_api.socket_path', dirname(c.workload_api.socket_path), true);
  r.checked.push('data directory, bootstrap bundle, event log, socket directory');
  if (options.checkTpm) {
    const { TpmDevice } = await import('../tpm/device.js');
    let device;
    try {
      device = await TpmDevice.open(c.tpm.tcti);
      r.checked.push(`TPM opened (${c.tpm.tcti})`);
    } catch (e) {
      r.problem('agent.tpm.tcti', `${(e as Error).name}: ${(e as Error).message}`);
    } finally {
      await device?.close();
    }
  }
}

/** The human summary; the JSON form is the report itself. */
export function formatReport(report: ValidationReport): string {
  const lines: string[] = [];
  if (report.valid) lines.push(`${report.file}: valid ${report.kind} configuration`);
  else lines.push(`${report.file}: ${report.problems.length === 1 ? '1 problem' : `${report.problems.length} problems`}`);
  for (const p of report.problems) lines.push(`  ${p.path}: ${p.message}`);
  for (const w of report.warnings) lines.push(`  warning: ${w.path}: ${w.message}`);
  if (report.valid) for (const c of report.checked) lines.push(`  checked: ${c}`);
  return lines.join('\n');
}

function validateCommand(kind: 'server' | 'agent'): Command {
  const extra = kind === 'server' ? '--check-hsm' : '--check-tpm';
  return {
    usage: `--config FILE [${extra}] [--json]`,
    description:
      kind === 'server'
        ? 'Checks a server configuration as `keel server run` would, without starting: the file (permissions, schema), the files it names (PIN file, certificates, keys, firmware policies), and with --check-hsm the HSM token login. Exit 0 when valid, 1 with every problem listed.'
        : 'Checks an agent configuration as `keel agent run` would, without starting: the file (permissions, schema), the bootstrap bundle and other files it names, and with --check-tpm the TPM through its TCTI. Exit 0 when valid, 1 with every problem listed.',
    async run(argv) {
      const { values } = parseFlags(argv, {
        config: { type: 'string', short: 'c' },
        json: { type: 'boolean' },
        [kind === 'server' ? 'check-hsm' : 'check-tpm']: { type: 'boolean' },
      });
      if (typeof values.config !== 'string' || values.config === '') throw new CliError('--config FILE is required', 2);
      const report =
        kind === 'server'
          ? await validateServerConfig(values.config, { checkHsm: values['check-hsm'] === true })
          : await validateAgentConfig(values.config, { checkTpm: values['check-tpm'] === true });
      if (values.json) console.log(JSON.stringify(report, null, 2));
      else (report.valid ? console.log : console.error)(formatReport(report));
      return report.valid ? 0 : 1;
    },
  };
}

export const serverValidate = validateCommand('server');
export const agentValidate = validateCommand('agent');
