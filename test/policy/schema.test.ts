import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PolicyError, loadPolicies, loadPolicy, parsePolicy, validatePolicy } from '../../src/policy/index.js';
import { POLICY_DIR } from './fixtures.js';

const SHIPPED = ['swtpm-dev.yaml', 'secure-boot-required.yaml', 'example-rhel8-gce.yaml'];
const Z64 = '0'.repeat(64);

function issuesOf(text: string): string[] {
  try {
    parsePolicy(text);
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return (e as PolicyError).issues.map((i) => `${i.path}: ${i.message}`);
  }
  throw new Error('expected a PolicyError');
}

const head = 'apiVersion: keel.dev/v1\nkind: FirmwarePolicy\nname: t\nbank: sha256\n';

describe('loading', () => {
  it.each(SHIPPED)('loads the shipped %s', (f) => {
    const p = loadPolicy(join(POLICY_DIR, f));
    expect(p.apiVersion).toBe('keel.dev/v1');
    expect(`${p.name}.yaml`).toBe(f);
  });

  it('reads the shipped policies as documented', () => {
    const dev = loadPolicy(join(POLICY_DIR, 'swtpm-dev.yaml'));
    expect([...dev.pcrs.keys()]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect([...dev.pcrs.values()].every((v) => v.length === 1 && v[0] === Z64)).toBe(true);
    expect(dev.eventLog?.required).toBe(false);
    const sb = loadPolicy(join(POLICY_DIR, 'secure-boot-required.yaml'));
    expect(sb.eventLog).toMatchObject({ required: true, secureBoot: 'required', separators: [7], dbxRequired: [] });
    expect(sb.eventLog?.allowDigestQuirks).toHaveLength(4);
  });

  it('takes text as { text } and names the origin in errors', () => {
    expect(loadPolicy({ text: `${head}pcrs: { 0: "${Z64}" }` }).pcrs.get(0)).toEqual([Z64]);
    expect(() => loadPolicy({ text: 'kind: x', origin: 'inline' })).toThrow(/^inline: /);
    expect(() => loadPolicy('/nonexistent/p.yaml')).toThrow(/cannot read/);
  });

  it('refuses two policies with the same name', () => {
    const dir = mkdtempSync(join(tmpdir(), 'keel-policy-'));
    const a = join(dir, 'a.yaml');
    const b = join(dir, 'b.yaml');
    writeFileSync(a, `${head}pcrs: { 0: "${Z64}" }`);
    writeFileSync(b, `${head}pcrs: { 1: "${Z64}" }`);
    expect(() => loadPolicies([a, b])).toThrow(/"t" is already the name of the policy in .*a\.yaml/);
    expect(loadPolicies([a, join(POLICY_DIR, 'swtpm-dev.yaml')]).map((p) => p.name)).toEqual(['t', 'swtpm-dev']);
  });
});

describe('schema errors name the path', () => {
  it.each([
    [`${head}pcrs: { 7: abcd }`, 'pcrs.7: expected 64 hex characters for sha256, got 4'],
    [`${head}pcrs: { 7: [ "${Z64}", xyz ] }`, 'pcrs.7[1]: expected 64 hex characters for sha256, got non-hex "xyz"'],
    [`${head}pcrs: { 7: 0000 }`, 'pcrs.7: expected 64 hex characters for sha256; quote the value, YAML read it as a number'],
    [`${head}pcrs: { 24: "${Z64}" }`, 'pcrs.24: PCR index must be 0–23'],
    [`${head}pcrs: { 0: "${Z64}" }\nextra: 1`, 'extra: unknown key'],
    [`${head}eventLog: { secureBoot: maybe }`, 'eventLog.secureBoot: expected "required" | "disabled" | "any", got "maybe"'],
    [`${head}eventLog: { sb: required }`, 'eventLog.sb: unknown key'],
    [`${head}eventLog: { db: [ abc ] }`, 'eventLog.db[0]: expected 64 hex characters (SHA-256), got 3'],
    [`${head}eventLog: { bootloaders: [ "${'a'.repeat(64)}", [ "${'b'.repeat(40)}" ] ] }`, 'eventLog.bootloaders[1][0]: expected 64 hex characters (sha256 Authenticode digest), got 40'],
    [`${head}eventLog: { kernelCommandLine: { regex: "(a+)+" } }`, 'eventLog.kernelCommandLine.regex: refused: nested unbounded quantifiers (like (a+)+) are refused: exponential in backtracking engines (at character 0)'],
    [`${head}eventLog: { kernelCommandLine: { regex: a, exact: [a] } }`, 'eventLog.kernelCommandLine: give exactly one of regex or exact'],
    [`${head}eventLog: { required: false, secureBoot: required }`, 'eventLog.required: false contradicts the event-log assertions present (secureBoot): they need a log'],
    [`${head}eventLog: { allowDigestQuirks: [ made-up ] }`, 'eventLog.allowDigestQuirks[0]: expected "variable-data-only" | "shim-authority-minus-last-byte" | "ipl-text-after-prefix" | "utf16-text-with-nul", got "made-up"'],
    [`${head}selectors: [ "tpm:policy:other" ]\neventLog: {}`, 'selectors[0]: this selector is set by the server, not by a policy'],
    [`${head}eventLog: { separators: [7, 7] }`, 'eventLog.separators: duplicate entries'],
    [head, '(root): the policy asserts nothing: give pcrs or an eventLog section'],
    ['apiVersion: keel.dev/v2\nkind: FirmwarePolicy\nname: t\nbank: sha256\n', 'apiVersion: expected "keel.dev/v1", got "keel.dev/v2"'],
    ['apiVersion: keel.dev/v1\nkind: FirmwarePolicy\nname: Bad_Name\nbank: md5\n', 'name: expected 1–63 lowercase letters, digits, ".", "_" or "-", starting and ending with a letter or digit'],
    [`${head}pcrs: { 0: "${Z64}" }\npcrs: {}`, '(file): YAML line 6 column 1: Map keys must be unique'],
  ])('%#', (text, expected) => {
    expect(issuesOf(text)).toContain(expected);
  });

  it('sha1 and sha384 banks take 40 and 96 hex characters', () => {
    const t = (bank: string, len: number) => `apiVersion: keel.dev/v1\nkind: FirmwarePolicy\nname: t\nbank: ${bank}\npcrs: { 0: "${'a'.repeat(len)}" }`;
    expect(parsePolicy(t('sha1', 40)).pcrs.get(0)).toEqual(['a'.repeat(40)]);
    expect(parsePolicy(t('sha384', 96)).pcrs.get(0)).toEqual(['a'.repeat(96)]);
    expect(issuesOf(t('sha1', 64))).toEqual(['pcrs.0: expected 40 hex characters for sha1, got 64']);
  });

  it('normalizes hex to lowercase', () => {
    expect(parsePolicy(`${head}pcrs: { 0: "${'AB'.repeat(32)}" }`).pcrs.get(0)).toEqual(['ab'.repeat(32)]);
  });
});

describe('hostile input', () => {
  const TOP_KEYS = ['apiVersion', 'kind', 'name', 'bank', 'pcrs', 'eventLog', 'selectors', 'description', 'x'];
  const EVENT_KEYS = ['required', 'secureBoot', 'pk', 'kek', 'db', 'dbRequired', 'dbxRequired', 'separators', 'bootloaders', 'kernels', 'bootApplicationOrder', 'kernelCommandLine', 'allowDigestQuirks'];
  const leaf = fc.oneof(
    fc.constantFrom('keel.dev/v1', 'FirmwarePolicy', 'sha256', 'sha1', 'required', 'any', 'position', Z64, 'ab', '(a+)+', '.*', 'utf16-text-with-nul', 'tpm:x:y'),
    fc.string({ maxLength: 8 }),
    fc.integer({ min: -2, max: 30 }),
    fc.boolean(),
    fc.constant(null),
    fc.double(),
  );
  const value = fc.letrec<{ v: unknown }>((tie) => ({
    v: fc.oneof(
      { depthSize: 'small' },
      leaf,
      fc.array(tie('v'), { maxLength: 4 }),
      fc.dictionary(fc.oneof(fc.constantFrom(...EVENT_KEYS, '7', '24', 'regex', 'exact'), fc.string({ maxLength: 3 })), tie('v'), { maxKeys: 4 }),
    ),
  })).v;
  const doc = fc.record(
    Object.fromEntries(TOP_KEYS.map((k) => [k, k === 'eventLog' ? fc.dictionary(fc.constantFrom(...EVENT_KEYS), value, { maxKeys: 6 }) : value])),
    { requiredKeys: [] },
  );
  const typed = (f: () => unknown): void => {
    try {
      f();
    } catch (e) {
      if (!(e instanceof PolicyError)) throw e;
    }
  };

  it('random documents give a policy or a PolicyError, nothing else', () => {
    fc.assert(fc.property(fc.oneof(doc, value), (d) => typed(() => validatePolicy(d))), { numRuns: 1500 });
  });

  it('random text gives a policy or a PolicyError', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (t) => typed(() => parsePolicy(t))), { numRuns: 500 });
    expect(() => parsePolicy('a: &a [*a, *a]\nb: [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]')).toThrow(PolicyError);
    expect(() => parsePolicy('x'.repeat((1 << 20) + 1))).toThrow(/larger than/);
  });
});
