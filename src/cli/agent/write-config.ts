/**
 * The configuration of `keel agent api write`: a small YAML file (flat keys,
 * named after spiffe-helper's where one exists), every key also a flag; a
 * flag wins over the file. Unknown keys and bad values are errors naming the key.
 */
import { constants as osConstants } from 'node:os';
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { configPath, duration, loadConfig } from '../../config/index.js';
import { shown } from '../../config/values.js';
import { parseAccountFile } from '../../agent/workload/proc-parse.js';
import { DEFAULT_LAYOUT, splitCommandLine, CommandLineError, type SvidFileLayout } from '../../agent/files/index.js';
import { CliError } from '../command.js';

const octalMode = () =>
  z.unknown().transform((v, ctx) => {
    if (typeof v !== 'string' || !/^0?[0-7]{3}$/.test(v)) {
      ctx.addIssue({ code: 'custom', message: `expected an octal mode written as a quoted string like "0600", got ${shown(v)}` });
      return z.NEVER;
    }
    return Number.parseInt(v, 8);
  });

const signalName = () =>
  z.string().transform((v, ctx) => {
    const name = normaliseSignal(v);
    if (!name) {
      ctx.addIssue({ code: 'custom', message: `expected a signal name like "HUP" or "SIGUSR1", got ${shown(v)}` });
      return z.NEVER;
    }
    return name;
  });

export const writeConfigSchema = z.strictObject({
  socket: z.string().min(1).optional(),
  dir: configPath().optional(),
  /** Which SVID when the workload has several: by hint, or by SPIFFE ID; the first otherwise. */
  hint: z.string().min(1).optional(),
  spiffe_id: z.string().min(1).optional(),
  svid_file_name: z.string().optional(),
  svid_key_file_name: z.string().optional(),
  svid_bundle_file_name: z.string().optional(),
  federated_bundle_file_name: z.string().optional(),
  include_federated_domains: z.boolean().optional(),
  cert_file_mode: octalMode().optional(),
  key_file_mode: octalMode().optional(),
  dir_mode: octalMode().optional(),
  /** A user name or numeric uid; `group` likewise. */
  owner: z.union([z.string().min(1), z.number().int().min(0)]).optional(),
  group: z.union([z.string().min(1), z.number().int().min(0)]).optional(),
  keep_previous: z.number().int().min(1).max(100).optional(),
  on_update: z
    .strictObject({
      /** argv, run without a shell. */
      command: z.array(z.string().min(1)).min(1).optional(),
      /** One line for /bin/sh -c, when a shell is really wanted. */
      shell: z.string().min(1).optional(),
      timeout: duration().optional(),
    })
    .refine((o) => (o.command === undefined) !== (o.shell === undefined), { message: 'exactly one of command and shell' })
    .optional(),
  signal: z.strictObject({ name: signalName(), pid_file: configPath() }).optional(),
});
export type WriteConfigFile = z.output<typeof writeConfigSchema>;

export function normaliseSignal(v: string): NodeJS.Signals | undefined {
  const name = (v.toUpperCase().startsWith('SIG') ? v.toUpperCase() : `SIG${v.toUpperCase()}`) as NodeJS.Signals;
  return name in osConstants.signals ? name : undefined;
}

export interface WriteOptions {
  readonly socket: string | undefined;
  readonly dir: string;
  readonly hint: string | undefined;
  readonly spiffeId: string | undefined;
  readonly layout: Partial<SvidFileLayout>;
  /** argv of the command run after each update (for the shell: ['/bin/sh', '-c', line]). */
  readonly onUpdate: readonly string[] | undefined;
  readonly commandTimeoutMs: number;
  readonly signal: { readonly name: NodeJS.Signals; readonly pidFile: string } | undefined;
  readonly once: boolean;
}

export interface WriteFlags {
  config?: string;
  socket?: string;
  dir?: string;
  hint?: string;
  'spiffe-id'?: string;
  'svid-file-name'?: string;
  'key-file-name'?: string;
  'bundle-file-name'?: string;
  'federated-file-name'?: string;
  'include-federated'?: boolean;
  'cert-mode'?: string;
  'key-mode'?: string;
  owner?: string;
  'on-update'?: string;
  'on-update-shell'?: boolean;
  'command-timeout'?: string;
  signal?: string;
  'pid-file'?: string;
  once?: boolean;
}

function modeFlag(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^0?[0-7]{3}$/.test(v)) throw new CliError(`--${name}: expected an octal mode like 0600, got ${JSON.stringify(v)}`, 2);
  return Number.parseInt(v, 8);
}

/** A user or group name (from /etc/passwd or /etc/group, never NSS) or a numeric id. */
export function accountId(kind: 'user' | 'group', v: string | number, file = kind === 'user' ? '/etc/passwd' : '/etc/group'): number {
  if (typeof v === 'number' || /^\d{1,10}$/.test(v)) {
    const id = Number(v);
    if (id > 0xfffffffe) throw new CliError(`${kind} ${v}: not a valid id`, 2);
    return id;
  }
  let names: Map<number, string>;
  try {
    names = parseAccountFile(file, readFileSync(file, 'utf8'));
  } catch (e) {
    throw new CliError(`${kind} ${JSON.stringify(v)}: cannot read ${file}: ${(e as Error).message}`, 2);
  }
  for (const [id, name] of names) if (name === v) return id;
  throw new CliError(`${kind} ${JSON.stringify(v)}: no such ${kind} in ${file}`, 2);
}

function durationMs(flag: string, v: string): number {
  const m = /^(\d{1,6})(ms|s|m)$/.exec(v);
  if (!m) throw new CliError(`--${flag}: expected a duration like 30s or 500ms, got ${JSON.stringify(v)}`, 2);
  return Number(m[1]) * (m[2] === 'm' ? 60_000 : m[2] === 's' ? 1000 : 1);
}

/** Flags over the config file over the defaults; every inconsistency a CliError (exit 2). */
export function resolveWriteOptions(flags: WriteFlags): WriteOptions {
  const file: WriteConfigFile = flags.config ? loadConfig(flags.config, writeConfigSchema) : {};
  const dir = flags.dir ?? file.dir;
  if (!dir) throw new CliError('--dir (or dir: in --config) is required: the directory the files are kept in', 2);
  if (flags.hint !== undefined && flags['spiffe-id'] !== undefined) throw new CliError('--hint and --spiffe-id both pick the SVID; give one', 2);
  if (file.hint !== undefined && file.spiffe_id !== undefined) throw new CliError(`${flags.config}: hint and spiffe_id both pick the SVID; give one`, 2);

  let owner = flags.owner;
  let group: string | number | undefined;
  if (owner?.includes(':')) [owner, group] = owner.split(':', 2) as [string, string];
  const ownerV = owner ?? file.owner;
  const groupV = (owner !== undefined ? group : undefined) ?? file.group;

  let onUpdate: string[] | undefined;
  if (flags['on-update'] !== undefined) {
    if (flags['on-update-shell']) onUpdate = ['/bin/sh', '-c', flags['on-update']];
    else {
      try {
        onUpdate = splitCommandLine(flags['on-update']);
      } catch (e) {
        if (e instanceof CommandLineError) throw new CliError(`--on-update: ${e.message} (--on-update-shell runs it through /bin/sh -c)`, 2);
        throw e;
      }
    }
  } else if (flags['on-update-shell']) {
    throw new CliError('--on-update-shell needs --on-update', 2);
  } else if (file.on_update) {
    onUpdate = file.on_update.command ?? ['/bin/sh', '-c', file.on_update.shell!];
  }

  let signal: WriteOptions['signal'];
  if (flags.signal !== undefined || flags['pid-file'] !== undefined) {
    if (flags.signal === undefined || flags['pid-file'] === undefined) throw new CliError('--signal and --pid-file go together', 2);
    const name = normaliseSignal(flags.signal);
    if (!name) throw new CliError(`--signal: not a signal name: ${JSON.stringify(flags.signal)}`, 2);
    signal = { name, pidFile: flags['pid-file'] };
  } else if (file.signal) {
    signal = { name: file.signal.name as NodeJS.Signals, pidFile: file.signal.pid_file };
  }

  const layout: Partial<SvidFileLayout> = {
    svidFileName: flags['svid-file-name'] ?? file.svid_file_name ?? DEFAULT_LAYOUT.svidFileName,
    keyFileName: flags['key-file-name'] ?? file.svid_key_file_name ?? DEFAULT_LAYOUT.keyFileName,
    bundleFileName: flags['bundle-file-name'] ?? file.svid_bundle_file_name ?? DEFAULT_LAYOUT.bundleFileName,
    federatedFileName: flags['federated-file-name'] ?? file.federated_bundle_file_name ?? DEFAULT_LAYOUT.federatedFileName,
    includeFederatedInBundle: flags['include-federated'] ?? file.include_federated_domains ?? false,
    certMode: modeFlag('cert-mode', flags['cert-mode']) ?? file.cert_file_mode ?? DEFAULT_LAYOUT.certMode,
    keyMode: modeFlag('key-mode', flags['key-mode']) ?? file.key_file_mode ?? DEFAULT_LAYOUT.keyMode,
    dirMode: file.dir_mode ?? DEFAULT_LAYOUT.dirMode,
    keepPrevious: file.keep_previous ?? DEFAULT_LAYOUT.keepPrevious,
    ...(ownerV !== undefined && ownerV !== '' ? { uid: accountId('user', ownerV) } : {}),
    ...(groupV !== undefined && groupV !== '' ? { gid: accountId('group', groupV) } : {}),
  };

  return {
    socket: flags.socket ?? file.socket,
    dir,
    hint: flags.hint ?? (flags['spiffe-id'] === undefined ? file.hint : undefined),
    spiffeId: flags['spiffe-id'] ?? (flags.hint === undefined ? file.spiffe_id : undefined),
    layout,
    onUpdate,
    commandTimeoutMs: flags['command-timeout'] !== undefined ? durationMs('command-timeout', flags['command-timeout']) : (file.on_update?.timeout ?? 30) * 1000,
    signal,
    once: flags.once ?? false,
  };
}
