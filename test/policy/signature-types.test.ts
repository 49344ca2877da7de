/**
 * Every UEFI signature type in PK, KEK and db is compared by a policy that
 * pins the list, not only the X.509 and SHA-256 entries keel always read.
 * The logs are sb_cert_eventlog (go-attestation; Secure Boot on, PK, KEK and db
 * measured in PCR 7 as EV_EFI_VARIABLE_DRIVER_CONFIG) DERIVED here: one
 * EFI_SIGNATURE_LIST of one type appended to one variable, its event digests
 * recomputed (eventlog-builder.ts). With no published PCRs for a derived log,
 * its own replay stands in for the quote (as replayedEvidence does).
 * The policy pins each list to the log's original entries, by their plain
 * certificate fingerprints, as shipped policies do.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  EventType,
  SIGNATURE_TYPES,
  decodeEventData,
  parseEventLog,
  replay,
  summarize,
  type EventLog,
  type SignatureDatabase,
  type SignatureTypeInfo,
} from '../../src/tpm/eventlog/index.js';
import { evaluatePolicy, parsePolicy, type PolicyEvidence, type PolicyResult } from '../../src/policy/index.js';
import { appendToVariable, serializeLog, signatureList, withData } from '../tpm/eventlog-builder.js';
import { logBytes } from './fixtures.js';

const BASE = parseEventLog(logBytes('sb_cert_eventlog'));
const ORIGINAL = summarize(BASE, 'sha256').signatures;
const OWNER = '3f4e5d6c-7b8a-4912-a3b4-c5d6e7f80912';
const UNKNOWN_GUID = '0f1e2d3c-4b5a-4697-8879-6a5b4c3d2e1f';
const VARIABLE: Record<SignatureDatabase, string> = { pk: 'PK', kek: 'KEK', db: 'db', dbx: 'dbx' };

/** A certificate that is in none of sb_cert_eventlog's lists: the Red Hat PK of keylime's Secure Boot log. */
const FOREIGN_CERT: Buffer = (() => {
  const log = parseEventLog(logBytes('keylime_binary_bios_measurements-secureboot'));
  for (const e of log.events) {
    const d = decodeEventData(e);
    if (d.kind === 'uefi-variable' && d.known === 'PK' && d.signatures?.[0]?.type === 'x509') return d.signatures[0].certificate.der;
  }
  throw new Error('no PK certificate in the keylime log');
})();

/** `n` deterministic bytes, different for each type and list. */
const filler = (seed: string, n: number): Buffer => {
  const out: Buffer[] = [];
  for (let i = 0; out.length * 32 < n; i++) out.push(createHash('sha256').update(`${seed}/${i}`).digest());
  return Buffer.concat(out).subarray(0, n);
};

/** SignatureData of the size the type fixes (SIGNATURE_TYPES), a certificate for X.509, any length for PKCS#7 and unknown types. */
function entryData(t: SignatureTypeInfo | undefined, seed: string): Buffer {
  if (t?.name === 'x509') return FOREIGN_CERT;
  return filler(seed, t?.dataSize ?? 123);
}

/** The event index of `key`'s variable in PCR 7. */
function variableEvent(log: EventLog, key: SignatureDatabase): number {
  const k = log.events.findIndex((e) => {
    if (e.pcrIndex !== 7 || e.eventType !== EventType.EV_EFI_VARIABLE_DRIVER_CONFIG) return false;
    const d = decodeEventData(e);
    return d.kind === 'uefi-variable' && d.known === VARIABLE[key];
  });
  if (k < 0) throw new Error(`no ${VARIABLE[key]} event`);
  return k;
}

/** sb_cert_eventlog with `list` appended to `key`'s variable, digests recomputed; and its replay as the quote. */
function derived(key: SignatureDatabase, list: Buffer): PolicyEvidence & { eventLog: EventLog } {
  const k = variableEvent(BASE, key);
  const events = BASE.events.map((e, i) => (i === k ? withData(e, appendToVariable(e.data, list)) : e));
  const log = parseEventLog(serializeLog(BASE, events));
  return { bank: 'sha256', pcrs: replay(log, { banks: ['sha256'] }).get('sha256')!, eventLog: log };
}

const yamlList = (xs: readonly string[]): string => JSON.stringify(xs);
function pinning(extra: Partial<Record<'pk' | 'kek' | 'db', string[]>> = {}) {
  const plain = (k: 'pk' | 'kek' | 'db') => [...ORIGINAL[k].map((e) => e.value), ...(extra[k] ?? [])];
  return parsePolicy(
    [
      'apiVersion: keel.dev/v1',
      'kind: FirmwarePolicy',
      'name: pinned',
      'bank: sha256',
      'eventLog:',
      '  secureBoot: required',
      `  pk: ${yamlList(plain('pk'))}`,
      `  kek: ${yamlList(plain('kek'))}`,
      `  db: ${yamlList(plain('db'))}`,
      '',
    ].join('\n'),
  );
}
const withRules = (rules: string) =>
  parsePolicy(`apiVersion: keel.dev/v1\nkind: FirmwarePolicy\nname: t\nbank: sha256\neventLog:\n${rules}\n`);

function violations(r: PolicyResult) {
  if (r.pass) throw new Error(`expected a refusal, got a pass (${r.selectors.join(', ')})`);
  return r.violations;
}

/** Every type keel names, and one it does not (named by its GUID). */
const TYPES: ReadonlyArray<{ label: string; guid: string; info: SignatureTypeInfo | undefined }> = [
  ...SIGNATURE_TYPES.map((t) => ({ label: t.label, guid: t.guid, info: t })),
  { label: `unknown signature type ${UNKNOWN_GUID}`, guid: UNKNOWN_GUID, info: undefined },
];
const short = (hex: string): string => (hex.length > 16 ? `${hex.slice(0, 12)}…` : hex);

describe('a pinning policy on sb_cert_eventlog', () => {
  it('passes on the log as published (the control)', () => {
    expect(evaluatePolicy(pinning(), { bank: 'sha256', pcrs: replay(BASE, { banks: ['sha256'] }).get('sha256')!, eventLog: BASE })).toEqual({
      pass: true,
      selectors: ['tpm:policy:pinned'],
    });
    expect(ORIGINAL.pk.map((e) => e.type)).toEqual(['x509']);
    expect(ORIGINAL.kek.map((e) => e.type)).toEqual(['x509']);
    expect(ORIGINAL.db.map((e) => e.type)).toEqual(['x509', 'x509', 'x509', 'x509']);
  });

  for (const key of ['pk', 'kek', 'db'] as const) {
    describe(`${key}`, () => {
      it.each(TYPES)(`an appended $label entry is refused, named by its type and ref, and accepted once listed`, ({ guid, info }) => {
        const data = entryData(info, `${key}/${guid}`);
        const ev = derived(key, signatureList(guid, [{ owner: OWNER, data }]));
        // The entry is read, whatever its type, with the value and ref signature-types.ts documents.
        const entry = summarize(ev.eventLog, 'sha256').signatures[key].at(-1)!;
        const hashed = info === undefined || ['x509', 'rsa2048', 'rsa2048-sha256', 'rsa2048-sha1', 'pkcs7'].includes(info.name);
        const value = hashed ? createHash('sha256').update(data).digest('hex') : data.toString('hex');
        const ref = `${info?.name ?? guid}:${value}`;
        expect(entry).toMatchObject({ guid, value, ref, owner: OWNER });

        const v = violations(evaluatePolicy(pinning(), ev));
        expect(v).toHaveLength(1);
        expect(v[0]!.rule).toBe(`eventLog.${key}`);
        if (info?.name === 'x509') {
          // Certificates keep their long-standing name: fingerprint and subject.
          expect(v[0]!.detail).toMatch(new RegExp(`^certificate ${value} \\(CN=Red Hat Secure Boot \\(PK/KEK key 1\\)[\\s\\S]*\\) is in ${key} but not allowed; allowed: \\[`));
        } else if (info?.name === 'sha256' && key === 'db') {
          // A SHA-256 hash in db is what a plain value there has always meant.
          expect(v[0]!.detail).toMatch(new RegExp(`^SHA-256 entry ${value} is in db but not allowed`));
        } else {
          expect(v[0]!.detail).toBe(
            `${info?.label ?? `unknown signature type ${guid}`} entry ${short(value)} (list it as "${ref}") is in ${key} but not allowed; allowed: ` +
              `[${ORIGINAL[key].map((e) => short(e.value)).join(', ')}]`,
          );
        }

        // Listed by the ref the violation gives, the entry is allowed and nothing else is refused.
        expect(evaluatePolicy(pinning({ [key]: [ref] }), ev)).toEqual({ pass: true, selectors: ['tpm:policy:pinned'] });
        // The same ref in another list does not allow it here.
        const other = key === 'pk' ? 'kek' : 'pk';
        expect(violations(evaluatePolicy(pinning({ [other]: [ref] }), ev)).map((x) => x.rule)).toEqual([`eventLog.${key}`]);
        // A plain value stands for a certificate (and in db for a SHA-256 hash) only; for every other type it allows nothing.
        if (value.length === 64) {
          const plainAllows = info?.name === 'x509' || (info?.name === 'sha256' && key === 'db');
          expect(evaluatePolicy(pinning({ [key]: [value] }), ev).pass).toBe(plainAllows);
        }
      });
    });
  }

  it.each(SIGNATURE_TYPES.filter((t) => t.dataSize !== undefined))('a $label entry of the wrong size is a digest violation, not a crash', (t) => {
    const ev = derived('db', signatureList(t.guid, [{ owner: OWNER, data: filler(t.label, t.dataSize! + 1) }]));
    const v = violations(evaluatePolicy(pinning(), ev));
    expect(v.map((x) => x.rule)).toEqual(['eventLog.digests']);
    expect(v[0]!.detail).toContain(`malformed: ${t.label} entry is ${t.dataSize! + 1} bytes, expected ${t.dataSize}`);
  });
});

describe('dbRequired and dbxRequired by typed ref', () => {
  it.each(TYPES)('$label: required in db (or dbx) passes when the log has it, and is named when it does not', ({ guid, info }) => {
    for (const key of ['db', 'dbx'] as const) {
      const data = entryData(info, `${key}-required/${guid}`);
      const ev = derived(key, signatureList(guid, [{ owner: OWNER, data }]));
      const ref = summarize(ev.eventLog, 'sha256').signatures[key].at(-1)!.ref;
      expect(ref.startsWith(`${info?.name ?? guid}:`)).toBe(true);
      const rule = key === 'db' ? 'dbRequired' : 'dbxRequired';
      const policy = withRules(`  ${rule}: ${yamlList([ref])}`);
      expect(evaluatePolicy(policy, ev).pass, `${key} has ${ref}`).toBe(true);

      // The published log does not have it.
      const base = { bank: 'sha256' as const, pcrs: replay(BASE, { banks: ['sha256'] }).get('sha256')!, eventLog: BASE };
      const v = violations(evaluatePolicy(policy, base));
      expect(v.map((x) => x.rule)).toEqual([`eventLog.${rule}`]);
      expect(v[0]!.detail).toContain(short(ref));
      // Required in the other list, it is missing there.
      const elsewhere = withRules(`  ${key === 'db' ? 'dbxRequired' : 'dbRequired'}: ${yamlList([ref])}`);
      expect(violations(evaluatePolicy(elsewhere, ev)).map((x) => x.rule)).toEqual([`eventLog.${key === 'db' ? 'dbxRequired' : 'dbRequired'}`]);
    }
  });
});
