/**
 * Making a policy from a machine's own evidence (like Keylime's
 * reference-state generator): pin chosen PCR values and turn the event log's
 * facts into assertions. The result is checked against the evidence it came
 * from, so a generated policy always passes on its own machine, or the
 * generator says why not (a log that does not replay to the PCRs, bad digests).
 */
import {
  EventLogParseError,
  EventLogDigestError,
  EventLogReplayError,
  parseEventLog,
  summarize,
  type EventLog,
  type EventLogSummary,
  type SignatureSummary,
} from '../tpm/eventlog/index.js';
import { PolicyError } from './errors.js';
import { evaluatePolicy } from './evaluate.js';
import { validatePolicyDocument, type FirmwarePolicy, type PolicyBank } from './schema.js';
import { policyToYaml } from './yaml.js';

/** What to turn into assertions. */
export interface PolicyInclude {
  /** PCRs whose current values are pinned. */
  readonly pcrs?: readonly number[];
  /** secureBoot: required (or disabled) as the log shows it. */
  readonly secureBoot?: boolean;
  /** pk, kek and db allow-lists: exactly the entries present. */
  readonly certs?: boolean;
  /** dbxRequired: every revocation present (a minimum dbx). */
  readonly dbx?: boolean;
  /** bootloaders (all boot applications but the last, by position) and kernels (the last). */
  readonly bootApplications?: boolean;
  /** kernelCommandLine: the exact lines of the log. */
  readonly kernelCommandLine?: boolean;
}

export interface PolicyFromEvidenceInput {
  readonly name: string;
  readonly description?: string;
  readonly bank: PolicyBank;
  readonly pcrs: ReadonlyMap<number, Buffer>;
  readonly eventLog?: EventLog;
  readonly include: PolicyInclude;
  readonly selectors?: readonly string[];
}

const ORIGIN = '(generator)';
const fail = (path: string, message: string): never => {
  throw new PolicyError(ORIGIN, [{ path, message }]);
};

function summaryOf(log: EventLog, bank: PolicyBank): EventLogSummary {
  try {
    return summarize(log, bank);
  } catch (e) {
    if (e instanceof EventLogDigestError || e instanceof EventLogParseError || e instanceof EventLogReplayError) {
      return fail('eventLog', `cannot make a policy from this log: ${e.message}`);
    }
    throw e;
  }
}

const unique = (xs: readonly string[]): string[] => [...new Set(xs)];

/**
 * How a generated policy lists an entry: certificates (and db/dbx SHA-256
 * hashes) as the plain values policies have always held, so that existing
 * machines generate the same files; every other type as `<type>:<value>`,
 * which only that type matches. Plain ones first, in the order of `plain`
 * (the order earlier versions wrote them in).
 */
function entryValues(entries: readonly SignatureSummary[], plain: readonly string[]): string[] {
  const rank = (e: SignatureSummary): number => (plain.includes(e.type) ? plain.indexOf(e.type) : plain.length);
  const sorted = entries.map((e, k) => ({ e, k })).sort((a, b) => rank(a.e) - rank(b.e) || a.k - b.k);
  return unique(sorted.map(({ e }) => (plain.includes(e.type) ? e.value : e.ref)));
}

export function policyFromEvidence(input: PolicyFromEvidenceInput): FirmwarePolicy {
  const { include, bank } = input;
  const pcrs: Record<string, string> = {};
  for (const p of include.pcrs ?? []) {
    const v = input.pcrs.get(p);
    if (!v) fail('include.pcrs', `PCR ${p} is not among the PCR values given`);
    else pcrs[String(p)] = v.toString('hex');
  }

  const wantsLog = include.secureBoot || include.certs || include.dbx || include.bootApplications || include.kernelCommandLine;
  let eventLog: Record<string, unknown> | undefined;
  if (wantsLog) {
    if (!input.eventLog) return fail('eventLog', 'event-log assertions were asked for but no event log was given');
    const s = summaryOf(input.eventLog, bank);
    eventLog = {};
    if (include.secureBoot && s.secureBoot !== undefined) eventLog.secureBoot = s.secureBoot ? 'required' : 'disabled';
    if (include.certs) {
      eventLog.pk = entryValues(s.signatures.pk, ['x509']);
      eventLog.kek = entryValues(s.signatures.kek, ['x509']);
      eventLog.db = entryValues(s.signatures.db, ['x509', 'sha256']);
    }
    if (include.dbx) eventLog.dbxRequired = entryValues(s.signatures.dbx, ['sha256', 'x509']);
    // The PCR 7 separator ends the Secure Boot configuration; authorities come after it.
    if (include.secureBoot && s.separators.includes(7) && !s.separatorErrors.includes(7)) eventLog.separators = [7];
    const apps = s.bootApplications.map((a) => a.digest);
    if (include.bootApplications && apps.length) {
      eventLog.bootloaders = apps.length === 1 ? [apps[0]] : apps.slice(0, -1);
      if (apps.length > 1) eventLog.kernels = [apps.at(-1)];
    }
    if (include.kernelCommandLine && s.kernelCommandLines.length) eventLog.kernelCommandLine = { exact: unique(s.kernelCommandLines) };
  }

  const doc = {
    apiVersion: 'keel.dev/v1',
    kind: 'FirmwarePolicy',
    name: input.name,
    ...(input.description === undefined ? {} : { description: input.description }),
    bank,
    ...(Object.keys(pcrs).length ? { pcrs } : {}),
    ...(eventLog ? { eventLog } : {}),
    ...(input.selectors?.length ? { selectors: input.selectors } : {}),
  };
  const r = validatePolicyDocument(doc);
  if (!r.ok) throw new PolicyError(ORIGIN, r.issues);
  const self = evaluatePolicy(r.policy, { bank, pcrs: input.pcrs, ...(input.eventLog ? { eventLog: input.eventLog } : {}) });
  if (!self.pass) {
    throw new PolicyError(
      ORIGIN,
      self.violations.map((v) => ({ path: v.rule, message: `the evidence does not satisfy the policy made from it: ${v.detail}` })),
    );
  }
  return r.policy;
}

/** Comments for a generated YAML: certificate subjects and boot-application device paths by their hex value. */
export function evidenceComments(log: EventLog, bank: PolicyBank): Map<string, string> {
  const s = summaryOf(log, bank);
  const out = new Map<string, string>();
  for (const c of [...s.pk, ...s.kek, ...s.db, ...s.dbx]) if (c.subject) out.set(c.sha256, c.subject);
  // Typed entries say what they are; their hex alone would not.
  for (const list of Object.values(s.signatures)) for (const e of list) if (e.type !== 'x509' && e.type !== 'sha256') out.set(e.ref, e.label);
  for (const a of s.bootApplications) if (a.devicePath) out.set(a.digest, a.devicePath);
  return out;
}

export interface MachineEvidence {
  /** Raw measured-boot log (`/sys/kernel/security/tpm0/binary_bios_measurements`); absent when the machine has none. */
  readonly eventLogBytes?: Uint8Array;
  /** PCR values read from the TPM in `bank`. */
  readonly pcrValues: ReadonlyMap<number, Buffer>;
  readonly bank: PolicyBank;
  readonly name: string;
  readonly description?: string;
  readonly selectors?: readonly string[];
  /** Default: PCRs 0–7 that were read, and every event-log fact when a log is given. */
  readonly include?: PolicyInclude;
}

/** What `keel policy create-from-machine` prints: the policy and its YAML with explanatory comments. */
export function createPolicyFromMachine(m: MachineEvidence): { policy: FirmwarePolicy; yaml: string } {
  let eventLog: EventLog | undefined;
  if (m.eventLogBytes) {
    try {
      eventLog = parseEventLog(m.eventLogBytes);
    } catch (e) {
      if (e instanceof EventLogParseError) fail('eventLog', `the event log cannot be parsed: ${e.message}`);
      throw e;
    }
  }
  const all = eventLog !== undefined;
  const include: PolicyInclude = m.include ?? {
    pcrs: [0, 1, 2, 3, 4, 5, 6, 7].filter((p) => m.pcrValues.has(p)),
    secureBoot: all,
    certs: all,
    dbx: all,
    bootApplications: all,
    kernelCommandLine: all,
  };
  const policy = policyFromEvidence({
    name: m.name,
    bank: m.bank,
    pcrs: m.pcrValues,
    include,
    ...(m.description === undefined ? {} : { description: m.description }),
    ...(eventLog ? { eventLog } : {}),
    ...(m.selectors ? { selectors: m.selectors } : {}),
  });
  const yaml = policyToYaml(policy, {
    header:
      `Generated by keel from this machine's ${m.bank} PCRs${eventLog ? ' and measured-boot event log' : ''}.\n` +
      'Pinned PCR values change with firmware, boot-loader and kernel updates: remove the ones you do not want to pin.',
    ...(eventLog ? { comments: evidenceComments(eventLog, m.bank) } : {}),
  });
  return { policy, yaml };
}

