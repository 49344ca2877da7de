import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { decodeEventData, parseEventLog } from '../../src/tpm/eventlog/index.js';
import {
  PolicyError,
  evaluatePolicies,
  evaluatePolicy,
  loadPolicy,
  parsePolicy,
  requiredPcrs,
  type PolicyResult,
} from '../../src/policy/index.js';
import { POLICY_DIR, evidenceOf, logBytes, replayedEvidence } from './fixtures.js';

const shipped = (f: string) => loadPolicy(join(POLICY_DIR, f));
const EXAMPLE = shipped('example-rhel8-gce.yaml');
const SECURE_BOOT = shipped('secure-boot-required.yaml');
const DEV = shipped('swtpm-dev.yaml');

function violations(r: PolicyResult): string[] {
  if (r.pass) throw new Error(`expected a failure, got a pass with ${r.selectors.join(', ')}`);
  return r.violations.map((v) => `${v.rule}: ${v.detail}`);
}
const rules = (r: PolicyResult): string[] => [...new Set(violations(r).map((v) => v.split(':')[0]!))];
const policy = (body: string) => parsePolicy(`apiVersion: keel.dev/v1\nkind: FirmwarePolicy\nname: t\nbank: sha256\n${body}`);

describe('shipped policies on real logs', () => {
  it('the example passes on the log it was made from, with its published PCRs, and adds its selectors', () => {
    expect(evaluatePolicy(EXAMPLE, evidenceOf('rhel8-uefi.bin'))).toEqual({ pass: true, selectors: ['tpm:policy:example-rhel8-gce', 'tpm:platform:gce'] });
  });

  it('the example fails on another machine (ubuntu-2104-no-secure-boot) with specific violations', () => {
    const r = evaluatePolicy(EXAMPLE, evidenceOf('ubuntu-2104-no-secure-boot.bin'));
    const v = violations(r);
    // Same GCE firmware (PCR 0, 2, 3, 6 agree); different configuration, boot chain and keys.
    expect(rules(r)).toEqual(['pcrs.1', 'pcrs.4', 'pcrs.5', 'pcrs.7', 'eventLog.secureBoot', 'eventLog.bootloaders[0]', 'eventLog.bootloaders[1]', 'eventLog.kernels', 'eventLog.kernelCommandLine']);
    expect(v).toContain('pcrs.7: got 0d8847bc5eca06452df10e2f214363845c7ac11d47525a5474e225e72ce25dfe, allowed: [5fd54361d580…]');
    expect(v).toContain('eventLog.secureBoot: required but the log shows SecureBoot=0');
    expect(v.find((x) => x.startsWith('eventLog.kernelCommandLine'))).toMatch(/^eventLog.kernelCommandLine: "\/boot\/vmlinuz-5\.11\.0-1006-gcp .*" is not one of the 1 allowed command line\(s\)$/);
  });

  it('secure-boot-required passes on sb_cert_eventlog (SecureBoot=1, PCR 7 separator) and other Secure Boot logs', () => {
    for (const name of ['sb_cert_eventlog', 'rhel8-uefi.bin', 'cos-85-amd-sev.bin', 'cos-101-amd-sev.bin']) {
      expect(evaluatePolicy(SECURE_BOOT, evidenceOf(name)), name).toEqual({ pass: true, selectors: ['tpm:policy:secure-boot-required'] });
    }
    expect(requiredPcrs(SECURE_BOOT)).toEqual([7]);
  });

  it('secure-boot-required fails on logs without Secure Boot, naming the rule', () => {
    expect(violations(evaluatePolicy(SECURE_BOOT, evidenceOf('ubuntu-2104-no-secure-boot.bin')))).toEqual([
      'eventLog.secureBoot: required but the log shows SecureBoot=0',
    ]);
    // go-attestation publishes no PCR values for this log: its own replay stands in for the quote.
    expect(violations(evaluatePolicy(SECURE_BOOT, replayedEvidence('coreos_36_shielded_vm_no_secure_boot_eventlog')))).toEqual([
      'eventLog.secureBoot: required but the log shows SecureBoot=0',
    ]);
  });

  it('swtpm-dev refuses every real machine and passes on zeros without a log', () => {
    expect(rules(evaluatePolicy(DEV, evidenceOf('rhel8-uefi.bin')))).toEqual(['pcrs.0', 'pcrs.1', 'pcrs.2', 'pcrs.3', 'pcrs.4', 'pcrs.5', 'pcrs.6', 'pcrs.7']);
    const zeros = new Map([0, 1, 2, 3, 4, 5, 6, 7].map((i) => [i, Buffer.alloc(32)]));
    expect(evaluatePolicy(DEV, { bank: 'sha256', pcrs: zeros })).toEqual({ pass: true, selectors: ['tpm:policy:swtpm-dev', 'tpm:platform:swtpm'] });
    expect(violations(evaluatePolicy(DEV, { bank: 'sha1', pcrs: zeros }))).toEqual(['bank: the policy is for sha256 PCRs, the evidence is sha1']);
  });
});

describe('rules', () => {
  it('a changed PCR value is a pcrs.N violation; a missing one too', () => {
    const ev = evidenceOf('rhel8-uefi.bin');
    const pcrs = new Map(ev.pcrs);
    pcrs.set(7, Buffer.alloc(32, 0xab));
    expect(violations(evaluatePolicy(EXAMPLE, { ...ev, pcrs }))).toContain(`pcrs.7: got ${'ab'.repeat(32)}, allowed: [5fd54361d580…]`);
    pcrs.delete(3);
    expect(violations(evaluatePolicy(EXAMPLE, { ...ev, pcrs }))).toContain('pcrs.3: PCR 3 is not in the quoted PCRs; allowed: [3d458cfe55cc…]');
  });

  it('a byte flipped in a db certificate is a digest violation, not a crash', () => {
    const b = Buffer.from(logBytes('sb_cert_eventlog'));
    const db = parseEventLog(b).events.find((e) => {
      const d = decodeEventData(e);
      return d.kind === 'uefi-variable' && d.known === 'db';
    })!;
    const d = decodeEventData(db);
    if (d.kind !== 'uefi-variable') throw new Error('unreachable');
    b[d.variable.dataOffset + 100]! ^= 0x01;
    const tampered = parseEventLog(b);
    const r = evaluatePolicy(SECURE_BOOT, evidenceOf('sb_cert_eventlog', 'sha256', tampered));
    expect(violations(r)).toEqual([`eventLog.digests: event ${db.seq} (EV_EFI_VARIABLE_DRIVER_CONFIG, PCR 7): data does not hash to the sha256 digest`]);
  });

  it('facts are read only from quoted PCRs that the log replays to', () => {
    const ev = evidenceOf('sb_cert_eventlog');
    const without7 = new Map(ev.pcrs);
    without7.delete(7);
    expect(violations(evaluatePolicy(SECURE_BOOT, { ...ev, pcrs: without7 }))).toEqual([
      'eventLog: PCR 7 is not in the quoted PCRs, so the log\'s events there are not attested (the rules secureBoot, separators read PCRs 7)',
    ]);
    // A log from another machine with this machine's quote: replay mismatch.
    const other = { ...evidenceOf('rhel8-uefi.bin'), pcrs: ev.pcrs };
    expect(violations(evaluatePolicy(SECURE_BOOT, other))[0]).toMatch(/^eventLog\.replay: event log replay \(sha256, PCR 7\): quoted 51b30488.* but the log replays to /);
    expect(violations(evaluatePolicy(SECURE_BOOT, { bank: 'sha256', pcrs: ev.pcrs }))).toEqual([
      'eventLog.required: the policy needs the measured-boot event log and the node sent none',
    ]);
    expect(violations(evaluatePolicy(policy('eventLog: {}'), { ...evidenceOf('debian-10.bin', 'sha1'), bank: 'sha256' }))).toEqual([
      'eventLog: the log has no sha256 digests (it has sha1)',
    ]);
  });

  it('digest quirks are accepted by default and refused when the policy says so', () => {
    expect(evaluatePolicy(policy('eventLog: {}'), evidenceOf('sb_cert_eventlog')).pass).toBe(true);
    const strict = policy('eventLog: { allowDigestQuirks: [] }');
    expect(violations(evaluatePolicy(strict, evidenceOf('sb_cert_eventlog')))).toEqual([
      'eventLog.allowDigestQuirks: 2 event(s) (first: event 12) match their digest only through the quirk "shim-authority-minus-last-byte", which the policy does not allow',
    ]);
  });

  it('kernel command line: regex pass and fail, exact lines', () => {
    const ev = evidenceOf('rhel8-uefi.bin');
    const pass = policy('eventLog:\n  kernelCommandLine:\n    regex: "\\\\(hd0,gpt2\\\\)/boot/vmlinuz-4\\\\.18\\\\.\\\\S+ root=UUID=[0-9a-f-]{36} ro .* console=ttyS0,38400n8"');
    expect(evaluatePolicy(pass, ev).pass).toBe(true);
    expect(requiredPcrs(pass)).toEqual([8, 9, 12]);
    const fail = policy('eventLog:\n  kernelCommandLine:\n    regex: ".* ro .*init=/bin/sh.*"');
    expect(violations(evaluatePolicy(fail, ev))).toEqual([
      expect.stringMatching(/^eventLog.kernelCommandLine: "\(hd0,gpt2\)\/boot\/vmlinuz-4\.18\.0-240.* does not match "\.\* ro \.\*init=\/bin\/sh\.\*"$/),
    ]);
    const exact = policy('eventLog:\n  kernelCommandLine:\n    exact: ["root=/dev/sda1 ro"]');
    expect(rules(evaluatePolicy(exact, ev))).toEqual(['eventLog.kernelCommandLine']);
    // A log without any command line fails a command-line rule.
    expect(violations(evaluatePolicy(pass, evidenceOf('glinux-alex.bin')))).toEqual(['eventLog.kernelCommandLine: the log has no kernel command line']);
  });

  it('certificate allow-lists, dbRequired and dbxRequired', () => {
    const ev = evidenceOf('sb_cert_eventlog');
    const pk = 'ff'.repeat(32);
    const r = evaluatePolicy(policy(`eventLog:\n  pk: ["${pk}"]\n  dbRequired: ["${'11'.repeat(32)}"]\n  dbxRequired: ["${'22'.repeat(32)}"]`), ev);
    const v = violations(r);
    expect(rules(r)).toEqual(['eventLog.pk', 'eventLog.dbRequired', 'eventLog.dbxRequired']);
    expect(v[0]).toMatch(/^eventLog.pk: certificate [0-9a-f]{64} .* is in pk but not allowed; allowed: \[ffffffffffff…\]$/);
    expect(v[2]).toBe(`eventLog.dbxRequired: 1 required revocation(s) missing from dbx: [222222222222…] (dbx has 77 entries)`);
  });

  it('boot applications by position and in any order', () => {
    const ev = evidenceOf('rhel8-uefi.bin');
    const [shim, grub, kernel] = EXAMPLE.eventLog!.bootloaders!.flat().concat(EXAMPLE.eventLog!.kernels!);
    const swapped = policy(`eventLog:\n  bootloaders: ["${grub}", "${shim}"]\n  kernels: ["${kernel}"]`);
    expect(rules(evaluatePolicy(swapped, ev))).toEqual(['eventLog.bootloaders[0]', 'eventLog.bootloaders[1]']);
    const anyOrder = policy(`eventLog:\n  bootloaders: ["${grub}", "${shim}"]\n  kernels: ["${kernel}"]\n  bootApplicationOrder: any`);
    expect(evaluatePolicy(anyOrder, ev).pass).toBe(true);
    const noKernel = policy(`eventLog:\n  bootloaders: ["${shim}", "${grub}"]`);
    expect(violations(evaluatePolicy(noKernel, ev))).toEqual([
      `eventLog.bootloaders: boot application 2: ${kernel} comes after the 2 allowed stage(s) and the policy lists no kernels`,
    ]);
    expect(requiredPcrs(noKernel)).toEqual([4]);
  });
});

describe('policy sets', () => {
  it('a node passes with at least one passing policy and gets the selectors of all that pass', () => {
    const set = evaluatePolicies([DEV, SECURE_BOOT, EXAMPLE], evidenceOf('rhel8-uefi.bin'));
    expect(set.pass).toBe(true);
    expect(set.passed).toEqual(['secure-boot-required', 'example-rhel8-gce']);
    expect(set.selectors).toEqual(['tpm:platform:gce', 'tpm:policy:example-rhel8-gce', 'tpm:policy:secure-boot-required']);
    expect(set.results.get('swtpm-dev')?.pass).toBe(false);
    const none = evaluatePolicies([DEV, SECURE_BOOT], evidenceOf('ubuntu-2104-no-secure-boot.bin'));
    expect(none).toMatchObject({ pass: false, selectors: [], passed: [] });
    expect(evaluatePolicies([], evidenceOf('rhel8-uefi.bin')).pass).toBe(false);
    expect(() => evaluatePolicies([DEV, DEV], evidenceOf('rhel8-uefi.bin'))).toThrow(PolicyError);
  });
});
