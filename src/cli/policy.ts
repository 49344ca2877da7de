/**
 * `keel policy create-from-machine` and `keel policy check`: firmware policies
 * from, and against, the machine keel runs on (its TPM's PCRs and its
 * measured-boot event log), the way Keylime's reference-state generator works.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { TpmDevice, type PcrBank } from '../tpm/device.js';
import { parseEventLog } from '../tpm/eventlog/index.js';
import { createPolicyFromMachine, evaluatePolicies, loadPolicies } from '../policy/index.js';
import { CliError, parseFlags, type Command } from './command.js';

const DEFAULT_EVENT_LOG = '/sys/kernel/security/tpm0/binary_bios_measurements';
const DEFAULT_TCTI = 'device:/dev/tpmrm0';
const BANKS: readonly PcrBank[] = ['sha1', 'sha256', 'sha384'];

function bankOf(v: string | undefined): PcrBank {
  const b = (v ?? 'sha256') as PcrBank;
  if (!BANKS.includes(b)) throw new CliError(`--bank must be one of ${BANKS.join(', ')}, got ${JSON.stringify(v)}`, 2);
  return b;
}

function pcrList(v: string | undefined): number[] {
  const list = (v ?? '0-7').split(',').flatMap((part) => {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new CliError(`--pcrs: ${JSON.stringify(part)} is not a PCR index or range like 0-7`, 2);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a > 23 || b > 23 || b < a) throw new CliError(`--pcrs: ${part} is outside 0-23`, 2);
    return Array.from({ length: b - a + 1 }, (_, i) => a + i);
  });
  return [...new Set(list)].sort((x, y) => x - y);
}

async function readEvidence(opts: { tcti: string; bank: PcrBank; pcrs: number[]; eventLog: string | undefined; noEventLog: boolean }) {
  const dev = await TpmDevice.open(opts.tcti);
  let pcrValues: Map<number, Buffer>;
  try {
    pcrValues = (await dev.pcrRead([{ bank: opts.bank, pcrs: opts.pcrs }])).get(opts.bank) ?? new Map();
  } finally {
    await dev.close();
  }
  let eventLogBytes: Buffer | undefined;
  if (!opts.noEventLog) {
    const path = opts.eventLog ?? DEFAULT_EVENT_LOG;
    try {
      eventLogBytes = await readFile(path);
    } catch (e) {
      // The default path is optional (swtpm and VMs without measured boot have none); an explicit one is not.
      if (opts.eventLog !== undefined) throw new CliError(`cannot read the event log ${path}: ${(e as Error).message}`);
    }
  }
  return { pcrValues, eventLogBytes };
}

const machineFlags = {
  tcti: { type: 'string', default: DEFAULT_TCTI },
  bank: { type: 'string', default: 'sha256' },
  pcrs: { type: 'string', default: '0-7' },
  'event-log': { type: 'string' },
  'no-event-log': { type: 'boolean', default: false },
} as const;

export const policyCreateFromMachine: Command = {
  usage: '--name NAME [--tcti device:/dev/tpmrm0] [--bank sha256] [--pcrs 0-7] [--event-log PATH | --no-event-log] [--output FILE]',
  description:
    "Writes a firmware policy that this machine passes now: its PCR values and the facts of its measured-boot log\n" +
    '(Secure Boot state, PK/KEK/db certificates, dbx, boot applications, kernel command lines).',
  async run(argv) {
    const { values } = parseFlags(argv, { ...machineFlags, name: { type: 'string' }, output: { type: 'string', short: 'o' } });
    if (!values.name) throw new CliError('--name is required (it becomes the selector tpm:policy:<name>)', 2);
    const bank = bankOf(values.bank);
    const ev = await readEvidence({ tcti: values.tcti!, bank, pcrs: pcrList(values.pcrs), eventLog: values['event-log'], noEventLog: values['no-event-log']! });
    const { yaml } = createPolicyFromMachine({
      name: values.name,
      bank,
      pcrValues: ev.pcrValues,
      ...(ev.eventLogBytes ? { eventLogBytes: ev.eventLogBytes } : {}),
    });
    if (values.output) {
      await writeFile(values.output, yaml);
      console.error(`policy ${values.name} written to ${values.output}`);
    } else process.stdout.write(yaml);
    return 0;
  },
};

export const policyCheck: Command = {
  usage: '--policy FILE [--policy FILE…] [--tcti …] [--bank sha256] [--pcrs 0-7] [--event-log PATH | --no-event-log] [--json]',
  description: 'Evaluates firmware policies against this machine and prints each violation. Exit 0 when at least one passes.',
  async run(argv) {
    const { values } = parseFlags(argv, { ...machineFlags, policy: { type: 'string', multiple: true }, json: { type: 'boolean', default: false } });
    if (!values.policy?.length) throw new CliError('give at least one --policy FILE', 2);
    const policies = loadPolicies(values.policy);
    const bank = bankOf(values.bank);
    const ev = await readEvidence({ tcti: values.tcti!, bank, pcrs: pcrList(values.pcrs), eventLog: values['event-log'], noEventLog: values['no-event-log']! });
    const result = evaluatePolicies(policies, {
      bank,
      pcrs: ev.pcrValues,
      ...(ev.eventLogBytes ? { eventLog: parseEventLog(ev.eventLogBytes) } : {}),
    });
    if (values.json) {
      console.log(JSON.stringify({ pass: result.pass, selectors: result.selectors, results: Object.fromEntries(result.results) }, null, 2));
    } else {
      for (const [name, r] of result.results) {
        console.log(`${r.pass ? 'PASS' : 'FAIL'}  ${name}`);
        if (!r.pass) for (const v of r.violations) console.log(`      ${v.rule}: ${v.detail}`);
      }
      if (result.pass) console.log(`selectors: ${result.selectors.join(' ')}`);
    }
    return result.pass ? 0 : 1;
  },
};
