import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  EventLogDigestError,
  EventLogParseError,
  EventLogReplayError,
  checkEventDigests,
  decodeEventData,
  logBanks,
  parseEventLog,
  replay,
  summarize,
  verifyReplay,
  type HashAlg,
} from '../../src/tpm/eventlog/index.js';

const run = promisify(execFile);
const DIR = join(import.meta.dirname, '../data/eventlogs');

/** Raw log bytes; the Windows golden vector keeps its log base64 in Log.Raw. */
function raw(name: string): Buffer {
  const b = readFileSync(join(DIR, name));
  return name.endsWith('.json') ? Buffer.from(JSON.parse(b.toString()).Log.Raw, 'base64') : b;
}

const LOGS = readdirSync(DIR).filter((f) => !f.endsWith('.md') && f !== 'expected-pcrs.json' && !f.includes('bogus'));

/**
 * PCR values recorded next to the logs by their publishers (not by this
 * code): go-eventlog's extract_test.go, go-attestation's secureboot_test.go,
 * and the quote dump in windows_gcp_shielded_vm.json. See README.md.
 */
type Expected = Record<string, { source: string; pcrs: Partial<Record<HashAlg, Record<string, string>>>; efiAppDigests?: Record<string, string[]> }>;
const EXPECTED: Expected = JSON.parse(readFileSync(join(DIR, 'expected-pcrs.json'), 'utf8'));

function quoted(values: Record<string, string>): Map<number, Buffer> {
  return new Map(Object.entries(values).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')]));
}

describe('parse', () => {
  it.each(LOGS)('parses %s', (name) => {
    const log = parseEventLog(raw(name));
    expect(log.events.length).toBeGreaterThan(0);
    let end = 0;
    for (const e of log.events) {
      expect(e.offset).toBe(end); // events tile the log exactly
      end = e.dataOffset + e.data.length;
    }
    expect(end).toBe(log.size);
  });

  it('recognizes the crypto-agile format and its Spec ID algorithms', () => {
    const log = parseEventLog(raw('rhel8-uefi.bin'));
    expect(log.format).toBe('crypto-agile');
    if (log.format !== 'crypto-agile') return;
    expect(log.specId.algorithms.map((a) => [a.alg, a.digestSize])).toEqual([
      ['sha1', 20], ['sha256', 32], ['sha384', 48],
    ]);
    expect(log.specId.specVersion.major).toBe(2);
    expect(logBanks(log)).toEqual(['sha1', 'sha256', 'sha384']);
    // crypto_agile_eventlog lists SHA-256 only.
    expect(logBanks(parseEventLog(raw('crypto_agile_eventlog')))).toEqual(['sha256']);
  });

  it('parses the SHA-1-only format (debian-10, ebs_event_missing_eventlog)', () => {
    for (const name of ['debian-10.bin', 'ebs_event_missing_eventlog']) {
      const log = parseEventLog(raw(name));
      expect(log.format).toBe('sha1');
      expect(log.events.every((e) => e.digests.length === 1 && e.digests[0]!.alg === 'sha1')).toBe(true);
    }
  });

  it('rejects keylime’s bogus log and an empty log with EventLogParseError', () => {
    expect(() => parseEventLog(readFileSync(join(DIR, 'keylime_binary_bios_measurements-bogus')))).toThrow(EventLogParseError);
    expect(() => parseEventLog(Buffer.alloc(0))).toThrow(/empty/);
  });

  it('names the offset of a truncated event', () => {
    const b = raw('crypto_agile_eventlog');
    const log = parseEventLog(b);
    const last = log.events.at(-1)!;
    try {
      parseEventLog(b.subarray(0, last.dataOffset + 1));
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(EventLogParseError);
      expect((e as EventLogParseError).offset).toBe(last.dataOffset);
      expect((e as EventLogParseError).reason).toMatch(/truncated event data/);
    }
  });

  it('refuses an event size above the per-event limit before reading it', () => {
    const b = Buffer.from(raw('debian-10.bin'));
    b.writeUInt32LE(2 * 1024 * 1024, 28); // first event's eventSize
    expect(() => parseEventLog(b)).toThrow(/eventSize 2097152 exceeds/);
    expect(() => parseEventLog(raw('debian-10.bin'), { limits: { maxLogBytes: 1000 } })).toThrow(/limit 1000/);
  });

  it('refuses more digests than the Spec ID event lists', () => {
    const b = Buffer.from(raw('glinux-alex.bin')); // sha1 + sha256
    const log = parseEventLog(b);
    const second = log.events[1]!;
    b.writeUInt32LE(3, second.offset + 8);
    expect(() => parseEventLog(b)).toThrow(/digest count 3 exceeds the 2 algorithms/);
  });

  it('reads StartupLocality (glinux-alex: locality 3) and copies its input', () => {
    const b = Buffer.from(raw('glinux-alex.bin'));
    const log = parseEventLog(b);
    expect(log.startupLocality).toBe(3);
    const before = Buffer.from(log.events[1]!.data);
    b.fill(0);
    expect(log.events[1]!.data.equals(before)).toBe(true);
  });
});

describe('replay against PCR values published with the logs', () => {
  const cases = Object.entries(EXPECTED).flatMap(([name, exp]) =>
    Object.entries(exp.pcrs).map(([bank, pcrs]) => ({ name, bank: bank as HashAlg, pcrs: pcrs!, source: exp.source })),
  );

  it.each(cases)('$name $bank replays to the published PCRs ($source)', ({ name, bank, pcrs }) => {
    const log = parseEventLog(raw(name));
    const q = quoted(pcrs);
    // sb_cert_eventlog's quote also covers PCR 10, which the kernel's IMA log extends, not the firmware log.
    const ima = name === 'sb_cert_eventlog' ? q.get(10) : undefined;
    if (ima) q.delete(10);
    const result = verifyReplay(log, bank, q);
    expect(result.matched).toEqual([...q.keys()].sort((a, b) => a - b));
    if (ima) expect(() => verifyReplay(log, bank, new Map([[10, ima]]))).toThrow(/PCR 10\): .*never extends/);
  });

  it('StartupLocality 3 makes PCR 0 start at 00…03 (short_no_action_eventlog has nothing else)', () => {
    const pcrs = replay(parseEventLog(raw('short_no_action_eventlog')));
    expect(pcrs.get('sha1')!.get(0)!.toString('hex')).toBe('00'.repeat(19) + '03');
  });

  it('reports the first mismatching PCR and bank', () => {
    const exp = EXPECTED['rhel8-uefi.bin']!.pcrs.sha256!;
    const q = quoted(exp);
    q.set(4, Buffer.alloc(32, 0xab));
    q.set(7, Buffer.alloc(32, 0xcd));
    const log = parseEventLog(raw('rhel8-uefi.bin'));
    try {
      verifyReplay(log, 'sha256', q);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(EventLogReplayError);
      expect(e).toMatchObject({ bank: 'sha256', pcrIndex: 4 });
    }
  });

  it('holds a quoted PCR the log never extends to its reset value', () => {
    const log = parseEventLog(raw('rhel8-uefi.bin'));
    const q = quoted({ 10: '00'.repeat(32), 17: 'ff'.repeat(32) });
    expect(verifyReplay(log, 'sha256', q).notInLog).toEqual([10, 17]);
    expect(() => verifyReplay(log, 'sha256', quoted({ 10: '01'.repeat(32) }))).toThrow(/never extends/);
    expect(() => verifyReplay(log, 'sha512', quoted({}))).toThrow(EventLogReplayError);
  });

  it('agrees with tpm2_eventlog (tpm2-tools) on every log it can read', async () => {
    let compared = 0;
    for (const name of LOGS.filter((n) => !n.endsWith('.json') && n !== 'option_rom_eventlog' && n !== 'short_no_action_eventlog')) {
      // tpm2-tools 5.4 crashes on option_rom_eventlog and rejects short_no_action_eventlog.
      const { stdout } = await run('tpm2_eventlog', [join(DIR, name)], { maxBuffer: 64 << 20 });
      const theirs = new Map<string, Map<number, string>>();
      let bank: Map<number, string> | undefined;
      for (const line of stdout.slice(stdout.lastIndexOf('\npcrs:')).split('\n')) {
        const b = /^ {2}(\w+):$/.exec(line);
        if (b) theirs.set(b[1]!, (bank = new Map()));
        const p = /^ {4}(\d+)\s*: 0x([0-9a-fA-F]+)$/.exec(line);
        if (p && bank) bank.set(Number(p[1]), p[2]!.toLowerCase());
      }
      const log = parseEventLog(raw(name));
      const ours = replay(log);
      if (log.startupLocality !== undefined || log.hcrtmEvent !== undefined) {
        // tpm2-tools 5.4 ignores StartupLocality and H-CRTM (tpm2-tools PR 3268 came later); PCR 0 of these logs is checked against published values above.
        for (const m of [...ours.values(), ...theirs.values()]) m.delete(0);
      }
      // tpm2-tools also replays SM3-256 (the H-CRTM log has it), a bank keel does not replay.
      theirs.delete('sm3_256');
      expect([...theirs.keys()].sort(), name).toEqual([...ours.keys()].sort());
      for (const [alg, pcrs] of ours) {
        const t = theirs.get(alg)!;
        expect(new Map([...pcrs].map(([i, v]) => [i, v.toString('hex')])), `${name} ${alg}`).toEqual(t);
        compared++;
      }
    }
    expect(compared).toBeGreaterThan(20);
  });
});

describe('event data and digests', () => {
  it.each(LOGS)('every checkable event of %s hashes to its digest', (name) => {
    const log = parseEventLog(raw(name));
    for (const bank of logBanks(log)) {
      const r = checkEventDigests(log, bank);
      expect(r.failures.map((f) => `${f.event.seq} ${f.event.typeName}: ${f.reason}`)).toEqual([]);
    }
  });

  it('reports a variable event whose data was changed by one byte', () => {
    const b = Buffer.from(raw('sb_cert_eventlog'));
    const log = parseEventLog(b);
    const db = log.events.find((e) => {
      const d = decodeEventData(e);
      return d.kind === 'uefi-variable' && d.known === 'db';
    })!;
    const d = decodeEventData(db);
    if (d.kind !== 'uefi-variable') throw new Error('unreachable');
    b[d.variable.dataOffset + 100]! ^= 0x01; // inside the first db certificate
    const tampered = parseEventLog(b);
    for (const bank of ['sha1', 'sha256'] as const) {
      const r = checkEventDigests(tampered, bank, ['EV_EFI_VARIABLE_DRIVER_CONFIG']);
      expect(r.failures.map((f) => f.event.seq)).toEqual([db.seq]);
      expect(r.matched).toHaveLength(4); // SecureBoot, PK, KEK, dbx
    }
    expect(() => summarize(tampered, 'sha256')).toThrow(EventLogDigestError);
    // Replay cannot notice: the digests are untouched. That is why the data check exists.
    expect(replay(tampered).get('sha256')).toEqual(replay(log).get('sha256'));
  });

  it('accepts the documented quirks by name and no others', () => {
    const cos = checkEventDigests(parseEventLog(raw('cos-85-amd-sev.bin')), 'sha256');
    const forms = new Set(cos.quirks.map((q) => `${q.event.typeName}:${q.form}`));
    expect(forms).toEqual(
      new Set([
        'EV_EFI_VARIABLE_BOOT:variable-data-only',
        'EV_EFI_VARIABLE_AUTHORITY:shim-authority-minus-last-byte',
        'EV_IPL:ipl-text-after-prefix',
      ]),
    );
    // A variable-data-only digest is not accepted for EV_EFI_VARIABLE_DRIVER_CONFIG.
    expect(cos.matched.filter((m) => m.event.typeName === 'EV_EFI_VARIABLE_DRIVER_CONFIG').every((m) => m.form === 'event-data')).toBe(true);
    // systemd-boot's UTF-16 command line with its NUL cut short (arch-linux-workstation).
    const arch = checkEventDigests(parseEventLog(raw('arch-linux-workstation.bin')), 'sha256', ['EV_IPL']);
    expect(arch.quirks.map((q) => q.form)).toEqual(['utf16-text-with-nul']);
  });

  it('decodes separators, including Windows’ "WBCL" value, which is not an error', () => {
    const log = parseEventLog(raw('windows_gcp_shielded_vm.json'));
    const seps = log.events.filter((e) => e.typeName === 'EV_SEPARATOR').map((e) => [e.pcrIndex, decodeEventData(e)]);
    expect(seps).toEqual([
      [7, { kind: 'separator', value: 0, error: false }],
      [12, { kind: 'separator', value: 0x4c434257, error: false }],
      [13, { kind: 'separator', value: 0x4c434257, error: false }],
      [14, { kind: 'separator', value: 0x4c434257, error: false }],
    ]);
  });

  it('detects a separator error value and reports it in the summary', () => {
    const b = Buffer.from(raw('debian-10.bin'));
    const log = parseEventLog(b);
    const sep = log.events.find((e) => e.typeName === 'EV_SEPARATOR' && e.pcrIndex === 4)!;
    b.writeUInt32LE(1, sep.dataOffset);
    const bad = parseEventLog(b);
    expect(decodeEventData(bad.events[sep.seq]!)).toEqual({ kind: 'separator', value: 1, error: true });
    // The digest of the 0 separator no longer covers the data.
    expect(checkEventDigests(bad, 'sha1', ['EV_SEPARATOR']).failures.map((f) => f.event.seq)).toEqual([sep.seq]);
  });

  it('decodes grub’s PCR 8 strings and image load events', () => {
    const log = parseEventLog(raw('rhel8-uefi.bin'));
    const ipl = log.events.filter((e) => e.typeName === 'EV_IPL').map(decodeEventData);
    expect(ipl.some((d) => d.kind === 'ipl' && d.source === 'grub-cmd' && /^linux/.test(d.text))).toBe(true);
    expect(ipl.some((d) => d.kind === 'ipl' && d.source === 'grub-kernel-cmdline' && /^\(hd0,gpt2\)\/boot\/vmlinuz/.test(d.text))).toBe(true);
    const coreos = parseEventLog(raw('coreos_36_shielded_vm_no_secure_boot_eventlog'));
    const files = coreos.events.filter((e) => e.pcrIndex === 9).map(decodeEventData);
    expect(files).toContainEqual({ kind: 'ipl', source: 'grub-file', text: '(hd0,gpt3)/grub2/grub.cfg' });
    const app = log.events.find((e) => e.typeName === 'EV_EFI_BOOT_SERVICES_APPLICATION')!;
    const d = decodeEventData(app);
    expect(d.kind).toBe('image-load');
    if (d.kind === 'image-load') expect(d.image.devicePathText).toMatch(/\\EFI\\/i);
  });

  it('decodes the GPT event', () => {
    const log = parseEventLog(raw('crypto_agile_eventlog'));
    const d = decodeEventData(log.events.find((e) => e.typeName === 'EV_EFI_GPT_EVENT')!);
    expect(d.kind).toBe('gpt');
    if (d.kind === 'gpt') {
      // The EFI system partition type GUID.
      expect(d.gpt.partitions.some((p) => p.typeGuid === 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b')).toBe(true);
    }
  });
});

describe('summary', () => {
  it('extracts Secure Boot state and keys from sb_cert_eventlog as the file holds them', () => {
    const log = parseEventLog(raw('sb_cert_eventlog'));
    const s = summarize(log, 'sha256');
    expect(s.secureBoot).toBe(true);
    // Independently of the decoder: find each certificate's DER in the raw file by its subject.
    const subjects = (l: readonly { subject: string | undefined }[]): string[] => l.map((c) => c.subject ?? '?');
    expect(s.pk).toHaveLength(1);
    expect(s.kek).toHaveLength(1);
    expect(s.db.length).toBe(4);
    expect(subjects(s.db).join('\n')).toMatch(/Microsoft Windows Production PCA 2011/);
    expect(subjects(s.db).join('\n')).toMatch(/Microsoft Corporation UEFI CA 2011/);
    const file = raw('sb_cert_eventlog');
    for (const c of [...s.pk, ...s.kek, ...s.db]) {
      const der = findDerWithHash(file, c.sha256);
      expect(der, c.subject).toBeDefined();
    }
    expect(s.dbxHashes).toHaveLength(77);
    expect(s.separators).toEqual([7]);
    // shim's own certificate authorized the next stage, logged without an owner GUID (go-attestation issue 157).
    expect(s.authorities).toHaveLength(3);
    expect(s.authorities.filter((a) => a.owner === undefined)).toHaveLength(2);
    expect(s.digestQuirks).toEqual(['shim-authority-minus-last-byte']);
    expect(s.bootApplications).toHaveLength(3);
  });

  it('reads Secure Boot state as keylime’s tests expect it (enabled in -secureboot, disabled otherwise)', () => {
    expect(summarize(parseEventLog(raw('keylime_binary_bios_measurements-secureboot')), 'sha256').secureBoot).toBe(true);
    expect(summarize(parseEventLog(raw('keylime_binary_bios_measurements')), 'sha256').secureBoot).toBe(false);
  });

  it('lists the PCR 4 boot applications go-eventlog expects, and COS kernel command lines', () => {
    for (const [name, exp] of Object.entries(EXPECTED)) {
      for (const [alg, digests] of Object.entries(exp.efiAppDigests ?? {})) {
        const log = parseEventLog(raw(name));
        if (!logBanks(log).includes(alg as HashAlg)) continue;
        const s = summarize(log, alg as HashAlg);
        // go-eventlog lists the applications up to ExitBootServices; all of them are here, in order.
        expect(s.bootApplications.map((a) => a.digest).slice(0, digests.length), `${name} ${alg}`).toEqual(digests);
      }
    }
    const cos = summarize(parseEventLog(raw('cos-85-amd-sev.bin')), 'sha256');
    expect(cos.kernelCommandLines).toHaveLength(1);
    expect(cos.kernelCommandLines[0]).toMatch(/^\/syslinux\/vmlinuz\.A init=\/usr\/lib\/systemd\/systemd boot=local .*salt=40eb77fb/);
  });
});

function findDerWithHash(file: Buffer, sha256hex: string): Buffer | undefined {
  for (let i = file.indexOf(0x30); i >= 0 && i < file.length - 4; i = file.indexOf(0x30, i + 1)) {
    if (file[i + 1] !== 0x82) continue;
    const len = 4 + file.readUInt16BE(i + 2);
    const der = file.subarray(i, i + len);
    if (createHash('sha256').update(der).digest('hex') === sha256hex) return der;
  }
  return undefined;
}

