/**
 * Evaluation of firmware policies on attestation evidence: quoted PCR values
 * (already verified against a quote by the caller) and, optionally, the
 * parsed event log.
 *
 * The evaluator trusts nothing about the log beyond what it checks itself:
 * before it reads the log's facts it replays the log against the quoted value
 * of every PCR those facts come from (a fact from a PCR outside the quote is
 * refused), and it checks every event's data against its digest. All
 * problems are violations, never exceptions.
 */
import {
  EventLogDigestError,
  EventLogParseError,
  EventLogReplayError,
  EventType,
  checkEventDigests,
  logBanks,
  summarize,
  verifyReplay,
  type BootApplication,
  type EventLog,
  type EventLogSummary,
  type HashAlg,
  type SignatureDatabase,
  type SignatureSummary,
} from '../tpm/eventlog/index.js';
import { PolicyError } from './errors.js';

/**
 * Digest checks and the summary depend on the log and the bank only; a node
 * is evaluated against every configured policy, so each is computed once per
 * log (a thrown error is kept and thrown again, as a fresh call would).
 */
function oncePerLog<T>(cache: WeakMap<EventLog, Map<HashAlg, { ok: true; value: T } | { ok: false; error: unknown }>>, log: EventLog, bank: HashAlg, f: () => T): T {
  let byBank = cache.get(log);
  if (!byBank) cache.set(log, (byBank = new Map()));
  let r = byBank.get(bank);
  if (!r) {
    try {
      r = { ok: true, value: f() };
    } catch (error) {
      r = { ok: false, error };
    }
    byBank.set(bank, r);
  }
  if (r.ok) return r.value;
  throw r.error;
}
const digestReports = new WeakMap<EventLog, Map<HashAlg, { ok: true; value: ReturnType<typeof checkEventDigests> } | { ok: false; error: unknown }>>();
const summaries = new WeakMap<EventLog, Map<HashAlg, { ok: true; value: EventLogSummary } | { ok: false; error: unknown }>>();
import { compileLinePattern, type LinePattern } from './line-pattern.js';
import { MAX_COMMAND_LINE, assertionKeys, type EventLogRules, type FirmwarePolicy, type KernelCommandLineRule } from './schema.js';

export interface PolicyEvidence {
  /** The bank of `pcrs` and the bank the log is read in. */
  readonly bank: HashAlg;
  /** Quoted PCR values, verified against the quote by the caller. */
  readonly pcrs: ReadonlyMap<number, Buffer>;
  readonly eventLog?: EventLog;
}

export interface PolicyViolation {
  /** The policy key that failed: `bank`, `pcrs.7`, `eventLog.secureBoot`, `eventLog.bootloaders[1]`, … */
  readonly rule: string;
  /** What was found against what was expected. */
  readonly detail: string;
}

export type PolicyResult =
  | { readonly pass: true; readonly selectors: readonly string[] }
  | { readonly pass: false; readonly violations: readonly PolicyViolation[] };

/** PCRs holding what each kind of event-log rule reads (PC Client PFP). */
const SECURE_BOOT_PCR = 7;
const BOOT_APPLICATION_PCR = 4;
/** grub (8, 9) and systemd-boot (12; 8 in old versions) measure the command line here. */
const COMMAND_LINE_PCRS = [8, 9, 12];
const MAX_LISTED = 10;

/** The selector every node that passes `policy` gets. */
export function policySelector(policy: FirmwarePolicy): string {
  return `tpm:policy:${policy.name}`;
}

/** PCRs of the event log whose events the rules read; each must be quoted and replay. */
function logPcrs(r: EventLogRules): number[] {
  const s = new Set<number>(r.separators ?? []);
  if (r.secureBoot !== 'any' || r.pk || r.kek || r.db || r.dbRequired?.length || r.dbxRequired?.length) s.add(SECURE_BOOT_PCR);
  if (r.bootloaders || r.kernels) s.add(BOOT_APPLICATION_PCR);
  if (r.kernelCommandLine) for (const p of COMMAND_LINE_PCRS) s.add(p);
  return [...s].sort((a, b) => a - b);
}

/**
 * The PCRs a quote should cover for `policy`: the pinned ones and those the
 * event-log rules read (for a command-line rule all of 8, 9 and 12, so that no
 * measured command line can be left out of the log unnoticed). The server
 * should quote at least the union of these over its policies.
 */
export function requiredPcrs(policy: FirmwarePolicy): number[] {
  const s = new Set<number>(policy.pcrs.keys());
  if (policy.eventLog?.required) for (const p of logPcrs(policy.eventLog)) s.add(p);
  return [...s].sort((a, b) => a - b);
}

const short = (hex: string): string => (hex.length > 16 ? `${hex.slice(0, 12)}…` : hex);
const listed = (xs: readonly string[]): string =>
  `[${xs.slice(0, MAX_LISTED).map(short).join(', ')}${xs.length > MAX_LISTED ? `, … ${xs.length - MAX_LISTED} more` : ''}]`;

/**
 * Which entry types a plain 64-hex value in a policy list stands for (what
 * those lists have always meant); every type can be listed as `<type>:<value>`.
 */
const PLAIN: Readonly<Record<SignatureDatabase, readonly string[]>> = {
  pk: ['x509'],
  kek: ['x509'],
  db: ['x509', 'sha256'],
  dbx: ['x509', 'sha256'],
};

function listedEntry(e: SignatureSummary, values: readonly string[], plain: readonly string[]): boolean {
  return values.includes(e.ref) || (plain.includes(e.type) && values.includes(e.value));
}

/** How a violation names an entry: certificates and db hashes as before, every other type by its label and the ref to list. */
function entryName(e: SignatureSummary, key: SignatureDatabase): string {
  if (e.type === 'x509') return `certificate ${e.value}${e.subject ? ` (${e.subject})` : ''}`;
  if (e.type === 'sha256' && PLAIN[key].includes('sha256')) return `SHA-256 entry ${e.value}`;
  return `${e.label} entry ${short(e.value)} (list it as "${e.ref}")`;
}
const appName = (a: BootApplication): string => `${a.digest}${a.devicePath ? ` (${a.devicePath})` : ''}`;

const patterns = new WeakMap<KernelCommandLineRule, LinePattern>();
function patternOf(rule: { readonly regex: string }): LinePattern {
  let p = patterns.get(rule);
  if (!p) patterns.set(rule, (p = compileLinePattern(rule.regex)));
  return p;
}

export function evaluatePolicy(policy: FirmwarePolicy, evidence: PolicyEvidence): PolicyResult {
  const violations: PolicyViolation[] = [];
  const v = (rule: string, detail: string): void => void violations.push({ rule, detail });

  if (evidence.bank !== policy.bank) {
    v('bank', `the policy is for ${policy.bank} PCRs, the evidence is ${evidence.bank}`);
    return { pass: false, violations };
  }
  for (const [index, allowed] of policy.pcrs) {
    const got = evidence.pcrs.get(index);
    if (!got) v(`pcrs.${index}`, `PCR ${index} is not in the quoted PCRs; allowed: ${listed(allowed)}`);
    else if (!allowed.includes(got.toString('hex'))) v(`pcrs.${index}`, `got ${got.toString('hex')}, allowed: ${listed(allowed)}`);
  }
  if (policy.eventLog?.required) checkLog(policy.eventLog, evidence, v);

  return violations.length
    ? { pass: false, violations }
    : { pass: true, selectors: [policySelector(policy), ...policy.selectors] };
}

type Report = (rule: string, detail: string) => void;

function checkLog(rules: EventLogRules, evidence: PolicyEvidence, v: Report): void {
  const { eventLog: log, bank } = evidence;
  if (!log) return v('eventLog.required', 'the policy needs the measured-boot event log and the node sent none');
  if (!logBanks(log).includes(bank)) return v('eventLog', `the log has no ${bank} digests (it has ${logBanks(log).join(', ') || 'none'})`);

  // Only facts from quoted PCRs that the log replays to are facts. Command lines
  // may sit in 8, 9 or 12: each of those the log puts one in must be quoted.
  const ruled = logPcrs(rules);
  const withIpl = new Set(log.events.filter((e) => e.eventType === EventType.EV_IPL).map((e) => e.pcrIndex));
  const needed = ruled.filter((p) => !COMMAND_LINE_PCRS.includes(p) || withIpl.has(p) || evidence.pcrs.has(p));
  const missing = needed.filter((p) => !evidence.pcrs.has(p));
  if (missing.length) {
    return v(
      'eventLog',
      `PCR ${missing.join(', ')} ${missing.length > 1 ? 'are' : 'is'} not in the quoted PCRs, so the log's events there are not attested ` +
        `(the rules ${assertionKeys(rules).join(', ')} read PCRs ${needed.join(', ')})`,
    );
  }
  try {
    verifyReplay(log, bank, new Map(needed.map((p) => [p, evidence.pcrs.get(p)!])));
  } catch (e) {
    if (e instanceof EventLogReplayError) return v('eventLog.replay', e.message);
    throw e;
  }

  // The event data must be what was measured; quirks only where the policy allows them.
  const report = oncePerLog(digestReports, log, bank, () => checkEventDigests(log, bank));
  report.failures.slice(0, MAX_LISTED).forEach((f) =>
    v('eventLog.digests', `event ${f.event.seq} (${f.event.typeName}, PCR ${f.event.pcrIndex}): ${f.reason}`),
  );
  if (report.failures.length > MAX_LISTED) v('eventLog.digests', `… and ${report.failures.length - MAX_LISTED} more events that do not match their digest`);
  const allowed = new Set<string>(rules.allowDigestQuirks);
  const refused = new Map<string, number[]>();
  for (const q of report.quirks) if (!allowed.has(q.form)) refused.set(q.form, [...(refused.get(q.form) ?? []), q.event.seq]);
  for (const [form, seqs] of refused) {
    v('eventLog.allowDigestQuirks', `${seqs.length} event(s) (first: event ${seqs[0]}) match their digest only through the quirk "${form}", which the policy does not allow`);
  }
  if (report.failures.length) return;

  let s: EventLogSummary;
  try {
    s = oncePerLog(summaries, log, bank, () => summarize(log, bank));
  } catch (e) {
    if (e instanceof EventLogDigestError) return v('eventLog.digests', e.message);
    if (e instanceof EventLogParseError || e instanceof EventLogReplayError) return v('eventLog', e.message);
    throw e;
  }
  checkFacts(rules, s, v);
}

function checkFacts(rules: EventLogRules, s: EventLogSummary, v: Report): void {
  const sb = s.secureBoot === undefined ? 'does not measure SecureBoot' : `shows SecureBoot=${s.secureBoot ? 1 : 0}`;
  if (rules.secureBoot === 'required' && s.secureBoot !== true) v('eventLog.secureBoot', `required but the log ${sb}`);
  if (rules.secureBoot === 'disabled' && s.secureBoot !== false) v('eventLog.secureBoot', `disabled but the log ${sb}`);

  for (const p of s.separatorErrors) v('eventLog.separators', `the separator of PCR ${p} carries the error value: the firmware reported a failure`);
  for (const p of rules.separators ?? []) {
    if (!s.separators.includes(p)) v('eventLog.separators', `PCR ${p} has no EV_SEPARATOR in the log`);
  }

  // Every entry of every signature type is compared; none is left out for being of a type keel reads less of.
  const allowList = (key: 'pk' | 'kek' | 'db'): void => {
    const allowed = rules[key];
    if (!allowed) return;
    for (const e of s.signatures[key]) {
      if (listedEntry(e, allowed, PLAIN[key])) continue;
      v(`eventLog.${key}`, `${entryName(e, key)} is in ${key} but not allowed; allowed: ${listed(allowed)}`);
    }
  };
  allowList('pk');
  allowList('kek');
  allowList('db');

  const minimum = (key: 'db' | 'dbx', required: readonly string[] | undefined): string[] =>
    (required ?? []).filter((h) => !s.signatures[key].some((e) => listedEntry(e, [h], PLAIN[key])));
  const missingDb = minimum('db', rules.dbRequired);
  if (missingDb.length) v('eventLog.dbRequired', `missing from db: ${listed(missingDb)} (db has ${s.signatures.db.length} entries)`);
  const missingDbx = minimum('dbx', rules.dbxRequired);
  if (missingDbx.length) {
    v('eventLog.dbxRequired', `${missingDbx.length} required revocation(s) missing from dbx: ${listed(missingDbx)} (dbx has ${s.signatures.dbx.length} entries)`);
  }

  checkBootApplications(rules, s.bootApplications, v);
  checkCommandLines(rules, s.kernelCommandLines, v);
}

function checkBootApplications(rules: EventLogRules, apps: readonly BootApplication[], v: Report): void {
  const { bootloaders, kernels } = rules;
  if (!bootloaders && !kernels) return;
  if (rules.bootApplicationOrder === 'any') {
    const allowed = new Set([...(bootloaders ?? []).flat(), ...(kernels ?? [])]);
    apps.forEach((a, k) => {
      if (!allowed.has(a.digest)) v('eventLog.bootloaders', `boot application ${k}: ${appName(a)} is not allowed; allowed: ${listed([...allowed])}`);
    });
    if (kernels && !apps.some((a) => kernels.includes(a.digest))) v('eventLog.kernels', `no boot application is an allowed kernel ${listed(kernels)}`);
    return;
  }
  const stages = bootloaders ?? [];
  stages.forEach((allowed, k) => {
    const a = apps[k];
    if (!a) v(`eventLog.bootloaders[${k}]`, `the log has only ${apps.length} boot application(s); allowed at position ${k}: ${listed(allowed)}`);
    else if (!allowed.includes(a.digest)) v(`eventLog.bootloaders[${k}]`, `got ${appName(a)}, allowed: ${listed(allowed)}`);
  });
  const rest = apps.slice(stages.length);
  if (kernels) {
    if (rest.length === 0) v('eventLog.kernels', `no boot application after the ${stages.length} boot-loader stage(s); allowed: ${listed(kernels)}`);
    rest.forEach((a, k) => {
      if (!kernels.includes(a.digest)) v('eventLog.kernels', `boot application ${stages.length + k}: got ${appName(a)}, allowed: ${listed(kernels)}`);
    });
  } else {
    rest.forEach((a, k) =>
      v('eventLog.bootloaders', `boot application ${stages.length + k}: ${appName(a)} comes after the ${stages.length} allowed stage(s) and the policy lists no kernels`),
    );
  }
}

function checkCommandLines(rules: EventLogRules, lines: readonly string[], v: Report): void {
  const rule = rules.kernelCommandLine;
  if (!rule) return;
  if (lines.length === 0) return v('eventLog.kernelCommandLine', 'the log has no kernel command line');
  const quote = (l: string): string => JSON.stringify(l.length > 200 ? `${l.slice(0, 200)}…` : l);
  for (const line of lines) {
    if (line.length > MAX_COMMAND_LINE) v('eventLog.kernelCommandLine', `a command line of ${line.length} characters is longer than ${MAX_COMMAND_LINE}`);
    else if ('regex' in rule) {
      if (!patternOf(rule).test(line)) v('eventLog.kernelCommandLine', `${quote(line)} does not match ${JSON.stringify(rule.regex)}`);
    } else if (!rule.exact.includes(line)) {
      v('eventLog.kernelCommandLine', `${quote(line)} is not one of the ${rule.exact.length} allowed command line(s)`);
    }
  }
}

export interface PolicySetResult {
  /** True when at least one policy passes. */
  readonly pass: boolean;
  /** Union of the selectors of every passing policy, sorted. */
  readonly selectors: readonly string[];
  /** Names of the passing policies, in the order given. */
  readonly passed: readonly string[];
  /** Every policy's result, by name, in the order given. */
  readonly results: ReadonlyMap<string, PolicyResult>;
}

/**
 * Evaluates every policy. A node is admitted when at least one passes (an
 * empty set admits nobody); it gets the selectors of all that pass, so
 * registration entries can require a particular policy by its selector.
 */
export function evaluatePolicies(policies: readonly FirmwarePolicy[], evidence: PolicyEvidence): PolicySetResult {
  const results = new Map<string, PolicyResult>();
  const selectors = new Set<string>();
  const passed: string[] = [];
  const names = policies.map((p) => p.name);
  const dup = names.find((n, k) => names.indexOf(n) !== k);
  if (dup !== undefined) throw new PolicyError('(policy set)', [{ path: 'name', message: `two policies are named "${dup}"` }]);
  for (const p of policies) {
    const r = evaluatePolicy(p, evidence);
    results.set(p.name, r);
    if (r.pass) {
      passed.push(p.name);
      for (const sel of r.selectors) selectors.add(sel);
    }
  }
  return { pass: passed.length > 0, selectors: [...selectors].sort(), passed, results };
}
