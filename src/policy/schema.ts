/**
 * The firmware-policy document (`apiVersion: keel.dev/v1`, `kind:
 * FirmwarePolicy`) and its validation into a normalized FirmwarePolicy.
 * Strict: unknown keys and bad values are PolicyIssues with the key path.
 * Two passes: structure first (zod), then what depends on `bank` (digest
 * lengths) and the command-line pattern.
 */
import { z } from 'zod';
import { valueHexLength, type DigestForm } from '../tpm/eventlog/index.js';
import { compileLinePattern, LinePatternError } from './line-pattern.js';
import type { PolicyIssue } from './errors.js';

export const API_VERSION = 'keel.dev/v1';
export const KIND = 'FirmwarePolicy';

export type PolicyBank = 'sha1' | 'sha256' | 'sha384';
export const POLICY_BANKS: readonly PolicyBank[] = ['sha1', 'sha256', 'sha384'];
const HEX_LENGTH: Readonly<Record<PolicyBank, number>> = { sha1: 40, sha256: 64, sha384: 96 };

export type SecureBootRule = 'required' | 'disabled' | 'any';
/** How `bootloaders` is matched: stage by stage (`position`) or as a set (`any`). */
export type BootApplicationOrder = 'position' | 'any';
export type DigestQuirk = Exclude<DigestForm, 'event-data'>;
export const DIGEST_QUIRKS: readonly DigestQuirk[] = [
  'variable-data-only',
  'shim-authority-minus-last-byte',
  'ipl-text-after-prefix',
  'utf16-text-with-nul',
];

export type KernelCommandLineRule = { readonly regex: string } | { readonly exact: readonly string[] };

/** Assertions on the event log; a policy with this section needs a log unless `required` is false. */
export interface EventLogRules {
  readonly required: boolean;
  readonly secureBoot: SecureBootRule;
  /**
   * Allow-lists (lowercase): every entry present, of any signature type, must
   * be listed. A plain 64-hex value is a certificate's SHA-256 fingerprint
   * (for db also an EFI_CERT_SHA256 hash); any entry can be named
   * `<type>:<value>` (see src/tpm/eventlog/signature-types.ts).
   */
  readonly pk?: readonly string[];
  readonly kek?: readonly string[];
  readonly db?: readonly string[];
  /** Entries db must contain: plain (certificate fingerprint or SHA-256 hash) or `<type>:<value>`. */
  readonly dbRequired?: readonly string[];
  /** Revocations dbx must contain (a minimum dbx): plain (SHA-256 hash or certificate fingerprint) or `<type>:<value>`. */
  readonly dbxRequired?: readonly string[];
  /** PCRs that must carry an EV_SEPARATOR (without the error value). */
  readonly separators?: readonly number[];
  /** Boot-loader stages: allowed digests of each of the first boot applications. */
  readonly bootloaders?: readonly (readonly string[])[];
  /** Allowed digests of the boot applications after the boot-loader stages. */
  readonly kernels?: readonly string[];
  readonly bootApplicationOrder: BootApplicationOrder;
  readonly kernelCommandLine?: KernelCommandLineRule;
  readonly allowDigestQuirks: readonly DigestQuirk[];
}

export interface FirmwarePolicy {
  readonly apiVersion: typeof API_VERSION;
  readonly kind: typeof KIND;
  /** Lowercase DNS-label-like name; the node gets the selector `tpm:policy:<name>`. */
  readonly name: string;
  readonly description?: string;
  readonly bank: PolicyBank;
  /** PCR index → allowed values (lowercase hex, bank-sized), ascending by index. */
  readonly pcrs: ReadonlyMap<number, readonly string[]>;
  readonly eventLog?: EventLogRules;
  /** Extra selectors the node gets when the policy passes. */
  readonly selectors: readonly string[];
}

export const NAME_RE = /^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$/;
export const SELECTOR_RE = /^[a-z0-9][a-z0-9_-]{0,31}:[\x21-\x7e]{1,255}$/;
/** Selectors the server derives itself; a policy must not be able to hand them out. */
/** Node selectors the server derives from the EK at admission; no policy may grant them. */
export const EK_SELECTOR_PREFIXES: readonly string[] = ['tpm:ek-hash:', 'tpm:ek-ca:'];
/** Selector prefixes only the server hands out: the EK's, the AK's and the policy-name selector. */
export const RESERVED_SELECTOR_PREFIXES: readonly string[] = ['tpm:policy:', 'tpm:ak-hash:', ...EK_SELECTOR_PREFIXES];
export const MAX_COMMAND_LINE = 4096;
const MAX_PCR = 23;
const MAX_LIST = 4096;

const uniqueStrings = <T extends z.ZodType<string>>(item: T, max: number) =>
  z.array(item).max(max).refine((a) => new Set(a).size === a.length, 'duplicate entries');

const eventLogSchema = z.strictObject({
  required: z.boolean().optional(),
  secureBoot: z.enum(['required', 'disabled', 'any']).optional(),
  pk: z.unknown().optional(),
  kek: z.unknown().optional(),
  db: z.unknown().optional(),
  dbRequired: z.unknown().optional(),
  dbxRequired: z.unknown().optional(),
  separators: z
    .array(z.int().min(0).max(MAX_PCR))
    .min(1)
    .max(MAX_PCR + 1)
    .refine((a) => new Set(a).size === a.length, 'duplicate entries')
    .optional(),
  bootloaders: z.array(z.unknown()).min(1).max(16).optional(),
  kernels: z.unknown().optional(),
  bootApplicationOrder: z.enum(['position', 'any']).optional(),
  kernelCommandLine: z
    .strictObject({
      regex: z.string().min(1).optional(),
      exact: z.array(z.string().min(1).max(MAX_COMMAND_LINE)).min(1).max(64).optional(),
    })
    .refine((k) => (k.regex === undefined) !== (k.exact === undefined), 'give exactly one of regex or exact')
    .optional(),
  allowDigestQuirks: uniqueStrings(z.enum(DIGEST_QUIRKS as [DigestQuirk, ...DigestQuirk[]]), DIGEST_QUIRKS.length).optional(),
});

const documentSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal(KIND),
  name: z.string().regex(NAME_RE, 'expected 1–63 lowercase letters, digits, ".", "_" or "-", starting and ending with a letter or digit'),
  description: z.string().max(4096).optional(),
  bank: z.enum(POLICY_BANKS as [PolicyBank, ...PolicyBank[]]),
  pcrs: z.record(z.string(), z.unknown()).optional(),
  eventLog: eventLogSchema.optional(),
  selectors: uniqueStrings(
    z
      .string()
      .regex(SELECTOR_RE, 'expected <type>:<value> (e.g. tpm:platform:gce)')
      .refine((s) => !RESERVED_SELECTOR_PREFIXES.some((p) => s.startsWith(p)), 'this selector is set by the server, not by a policy'),
    32,
  ).optional(),
});

type Document = z.output<typeof documentSchema>;
type Path = readonly (string | number)[];

export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += (out ? '.' : '') + String(seg);
  }
  return out || '(root)';
}

function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v === null || v === undefined) return String(v);
  return Array.isArray(v) ? 'a list' : `a ${typeof v}`;
}

function zodIssues(issues: readonly z.core.$ZodIssue[]): PolicyIssue[] {
  const out: PolicyIssue[] = [];
  for (const i of issues) {
    const path = formatPath(i.path);
    switch (i.code) {
      case 'unrecognized_keys':
        for (const k of i.keys) out.push({ path: formatPath([...i.path, k]), message: 'unknown key' });
        break;
      case 'invalid_type':
        out.push({ path, message: i.input === undefined ? `required (${i.expected})` : `expected ${i.expected}, got ${shown(i.input)}` });
        break;
      case 'invalid_value':
        out.push({ path, message: `expected ${i.values.map((v) => JSON.stringify(v)).join(' | ')}, got ${shown(i.input)}` });
        break;
      default:
        out.push({ path, message: i.message });
    }
  }
  return out;
}

/** Second pass: hex values whose length depends on the bank, and the pattern. */
class Checker {
  readonly issues: PolicyIssue[] = [];
  constructor(private readonly bank: PolicyBank) {}

  private issue(path: Path, message: string): undefined {
    this.issues.push({ path: formatPath(path), message });
    return undefined;
  }

  /** One hex value of `len` characters, normalized to lowercase. */
  hex(v: unknown, path: Path, len: number, what: string): string | undefined {
    if (typeof v === 'number') return this.issue(path, `expected ${len} hex characters ${what}; quote the value, YAML read it as a number`);
    if (typeof v !== 'string') return this.issue(path, `expected ${len} hex characters ${what}, got ${shown(v)}`);
    if (!/^[0-9a-fA-F]*$/.test(v)) return this.issue(path, `expected ${len} hex characters ${what}, got non-hex ${shown(v)}`);
    if (v.length !== len) return this.issue(path, `expected ${len} hex characters ${what}, got ${v.length}`);
    return v.toLowerCase();
  }

  /** A non-empty list of hex values (or, with `single`, one value standing for a list of one). */
  hexList(v: unknown, path: Path, len: number, what: string, opts: { single: boolean; allowEmpty: boolean }): string[] | undefined {
    if (opts.single && !Array.isArray(v)) {
      const one = this.hex(v, path, len, what);
      return one === undefined ? undefined : [one];
    }
    if (!Array.isArray(v)) return this.issue(path, `expected a list of ${len}-character hex values ${what}, got ${shown(v)}`);
    if (v.length === 0 && !opts.allowEmpty) return this.issue(path, 'expected at least one value');
    if (v.length > MAX_LIST) return this.issue(path, `more than ${MAX_LIST} values`);
    const out: string[] = [];
    let ok = true;
    v.forEach((item, k) => {
      const h = this.hex(item, [...path, k], len, what);
      if (h === undefined) ok = false;
      else out.push(h);
    });
    if (ok && new Set(out).size !== out.length) return this.issue(path, 'duplicate entries');
    return ok ? out : undefined;
  }

  /**
   * A list of signature-database entries: plain 64-hex values (what policies
   * have always held) or `<type>:<value>`, normalized to lowercase.
   */
  signatureList(v: unknown, path: Path, allowEmpty: boolean): string[] | undefined {
    if (!Array.isArray(v)) return this.issue(path, `expected a list of 64-character hex values or <type>:<value> entries, got ${shown(v)}`);
    if (v.length === 0 && !allowEmpty) return this.issue(path, 'expected at least one value');
    if (v.length > MAX_LIST) return this.issue(path, `more than ${MAX_LIST} values`);
    const out: string[] = [];
    let ok = true;
    v.forEach((item, k) => {
      const e = this.signatureEntry(item, [...path, k]);
      if (e === undefined) ok = false;
      else out.push(e);
    });
    if (ok && new Set(out).size !== out.length) return this.issue(path, 'duplicate entries');
    return ok ? out : undefined;
  }

  private signatureEntry(v: unknown, path: Path): string | undefined {
    if (typeof v !== 'string' || !v.includes(':')) return this.hex(v, path, 64, '(SHA-256)');
    const at = v.lastIndexOf(':');
    const token = v.slice(0, at).toLowerCase();
    const len = valueHexLength(token);
    if (len === undefined) {
      return this.issue(path, `unknown signature type ${shown(v.slice(0, at))}: expected a type name (x509, sha256, sha384, rsa2048, x509-sha256, …) or the GUID of a type keel does not name`);
    }
    const value = this.hex(v.slice(at + 1), path, len, `for a ${token} entry`);
    return value === undefined ? undefined : `${token}:${value}`;
  }

  pcrs(raw: Readonly<Record<string, unknown>> | undefined): Map<number, string[]> {
    const out = new Map<number, string[]>();
    const len = HEX_LENGTH[this.bank];
    for (const [key, v] of Object.entries(raw ?? {})) {
      if (!/^(0|[1-9][0-9]?)$/.test(key) || Number(key) > MAX_PCR) {
        this.issue(['pcrs', key], `PCR index must be 0–${MAX_PCR}`);
        continue;
      }
      const values = this.hexList(v, ['pcrs', key], len, `for ${this.bank}`, { single: true, allowEmpty: false });
      if (values) out.set(Number(key), values);
    }
    return new Map([...out].sort((a, b) => a[0] - b[0]));
  }

  eventLog(raw: NonNullable<Document['eventLog']>): EventLogRules {
    const p = ['eventLog'];
    const fp = (key: string, allowEmpty: boolean): string[] | undefined => {
      const v = raw[key as keyof typeof raw];
      return v === undefined ? undefined : this.signatureList(v, [...p, key], allowEmpty);
    };
    const bankLen = HEX_LENGTH[this.bank];
    const bootloaders = raw.bootloaders?.map(
      (stage, k) =>
        this.hexList(stage, [...p, 'bootloaders', k], bankLen, `(${this.bank} Authenticode digest)`, { single: true, allowEmpty: false }) ?? [],
    );
    const kernels =
      raw.kernels === undefined
        ? undefined
        : this.hexList(raw.kernels, [...p, 'kernels'], bankLen, `(${this.bank} Authenticode digest)`, { single: false, allowEmpty: false });
    let kernelCommandLine: KernelCommandLineRule | undefined;
    if (raw.kernelCommandLine?.regex !== undefined) {
      try {
        compileLinePattern(raw.kernelCommandLine.regex);
        kernelCommandLine = { regex: raw.kernelCommandLine.regex };
      } catch (e) {
        if (!(e instanceof LinePatternError)) throw e;
        this.issue([...p, 'kernelCommandLine', 'regex'], `refused: ${e.message}`);
      }
    } else if (raw.kernelCommandLine?.exact !== undefined) {
      kernelCommandLine = { exact: raw.kernelCommandLine.exact };
    }
    const rules: EventLogRules = {
      required: raw.required ?? true,
      secureBoot: raw.secureBoot ?? 'any',
      ...defined('pk', fp('pk', true)),
      ...defined('kek', fp('kek', true)),
      ...defined('db', fp('db', true)),
      ...defined('dbRequired', fp('dbRequired', false)),
      ...defined('dbxRequired', fp('dbxRequired', true)),
      ...defined('separators', raw.separators ? [...raw.separators].sort((a, b) => a - b) : undefined),
      ...defined('bootloaders', bootloaders),
      ...defined('kernels', kernels),
      bootApplicationOrder: raw.bootApplicationOrder ?? 'position',
      ...defined('kernelCommandLine', kernelCommandLine),
      allowDigestQuirks: raw.allowDigestQuirks ?? DIGEST_QUIRKS,
    };
    if (raw.required === false) {
      const asserted = assertionKeys(rules);
      if (asserted.length) {
        this.issue([...p, 'required'], `false contradicts the event-log assertions present (${asserted.join(', ')}): they need a log`);
      }
    }
    if (raw.bootApplicationOrder !== undefined && !raw.bootloaders && !raw.kernels) {
      this.issue([...p, 'bootApplicationOrder'], 'has no effect without bootloaders or kernels');
    }
    return rules;
  }
}

function defined<K extends string, V>(key: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [key]: v }) as { [P in K]?: V };
}

/** The event-log rule keys that assert something about the log's contents. */
export function assertionKeys(r: EventLogRules): string[] {
  const keys: string[] = [];
  if (r.secureBoot !== 'any') keys.push('secureBoot');
  for (const k of ['pk', 'kek', 'db', 'separators', 'bootloaders', 'kernels', 'kernelCommandLine'] as const) {
    if (r[k] !== undefined) keys.push(k);
  }
  // An empty allow-list asserts something (nothing may be present); an empty minimum does not.
  if (r.dbRequired?.length) keys.push('dbRequired');
  if (r.dbxRequired?.length) keys.push('dbxRequired');
  return keys;
}

/**
 * Validates a parsed document (the object YAML gave). Returns the policy or
 * the list of issues; never throws for any input value.
 */
export function validatePolicyDocument(value: unknown): { ok: true; policy: FirmwarePolicy } | { ok: false; issues: PolicyIssue[] } {
  const parsed = documentSchema.safeParse(value, { reportInput: true });
  if (!parsed.success) return { ok: false, issues: zodIssues(parsed.error.issues) };
  const doc = parsed.data;
  const c = new Checker(doc.bank);
  const pcrs = c.pcrs(doc.pcrs);
  const eventLog = doc.eventLog ? c.eventLog(doc.eventLog) : undefined;
  if (c.issues.length) return { ok: false, issues: c.issues };
  const policy: FirmwarePolicy = {
    apiVersion: API_VERSION,
    kind: KIND,
    name: doc.name,
    ...defined('description', doc.description),
    bank: doc.bank,
    pcrs,
    ...defined('eventLog', eventLog),
    selectors: doc.selectors ?? [],
  };
  if (pcrs.size === 0 && !eventLog?.required) {
    return { ok: false, issues: [{ path: '(root)', message: 'the policy asserts nothing: give pcrs or an eventLog section' }] };
  }
  return { ok: true, policy };
}
