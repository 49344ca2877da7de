/** The /proc and /etc parsers: real-shaped samples, then garbage (fast-check) that must give ProcFormatError or a value, never a crash. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ProcFormatError } from '../../src/agent/workload/errors.js';
import {
  containerIdFromCgroup,
  parseAccountFile,
  parseCgroupFile,
  parseStatStartTime,
  parseStatusGroups,
  systemdUnitFromCgroup,
  MAX_PROC_FILE_CHARS,
} from '../../src/agent/workload/proc-parse.js';

const ID = 'a'.repeat(8) + '0123456789abcdef'.repeat(3) + 'ffeeddcc'; // 64 hex
const statLine = (comm: string, start: string) =>
  `4242 (${comm}) S 1 4242 4242 0 -1 4194560 1000 0 0 0 5 3 0 0 20 0 1 0 ${start} 12345678 300 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n`;

function onlyTypedErrors(fn: () => unknown): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ProcFormatError);
  }
}

describe('parseStatStartTime', () => {
  it('reads field 22 of this process, as awk splits it', () => {
    const text = readFileSync(`/proc/${process.pid}/stat`, 'utf8');
    const awk = execFileSync('awk', ['{print $22}', `/proc/${process.pid}/stat`], { encoding: 'utf8' }).trim();
    expect(parseStatStartTime(text)).toBe(BigInt(awk));
  });

  it('counts fields after the last ")" so a hostile comm cannot shift them', () => {
    expect(parseStatStartTime(statLine('a b', '777'))).toBe(777n);
    expect(parseStatStartTime(statLine('x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 999 (', '778'))).toBe(778n);
    expect(parseStatStartTime(statLine(')))', '779'))).toBe(779n);
  });

  it('refuses truncated, non-numeric and oversized input with ProcFormatError', () => {
    expect(() => parseStatStartTime('4242 (x) S 1 2 3')).toThrow(ProcFormatError);
    expect(() => parseStatStartTime(statLine('x', '12a'))).toThrow(/starttime/);
    expect(() => parseStatStartTime('no parens at all')).toThrow(/comm/);
    expect(() => parseStatStartTime(statLine('x'.repeat(MAX_PROC_FILE_CHARS), '1'))).toThrow(/longer than/);
  });

  it('fuzz: any string gives a bigint or ProcFormatError', () => {
    fc.assert(fc.property(fc.string({ maxLength: 400 }), (s) => onlyTypedErrors(() => parseStatStartTime(s))));
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (comm, start) => {
        expect(parseStatStartTime(statLine(comm.replace(/\n/g, ''), start.toString()))).toBe(start);
      }),
    );
  });
});

describe('parseStatusGroups', () => {
  it('reads the Groups line', () => {
    expect(parseStatusGroups('Name:\tx\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 \nNSpid:\t1\n')).toEqual([4, 24, 27]);
    expect(parseStatusGroups('Name:\tx\nGroups:\t\n')).toEqual([]);
  });
  it('refuses a missing line, non-numeric and out-of-range ids', () => {
    expect(() => parseStatusGroups('Name:\tx\n')).toThrow(/no Groups/);
    expect(() => parseStatusGroups('Groups:\t4 x\n')).toThrow(ProcFormatError);
    expect(() => parseStatusGroups('Groups:\t4294967296\n')).toThrow(/2\^32/);
  });
  it('fuzz', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (s) => onlyTypedErrors(() => parseStatusGroups(s))));
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (s) => onlyTypedErrors(() => parseStatusGroups(`Groups:${s}`))));
  });
});

describe('cgroup: systemd unit and container id', () => {
  const unit = (text: string) => systemdUnitFromCgroup(parseCgroupFile(text));
  const container = (text: string) => containerIdFromCgroup(parseCgroupFile(text));

  it('finds the systemd unit as systemd derives it', () => {
    expect(unit('0::/system.slice/nginx.service\n')).toBe('nginx.service');
    expect(unit('0::/system.slice/app.service/worker\n')).toBe('app.service');
    expect(unit('0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n')).toBe('user@1000.service');
    expect(unit('0::/init.scope\n')).toBe('init.scope');
    expect(unit('0::/\n')).toBeUndefined();
    expect(unit('0::/system.slice\n')).toBeUndefined();
    expect(unit('0::/kubepods/burstable/pod1/' + ID + '\n')).toBeUndefined();
    // cgroup v1 (hybrid): the name=systemd hierarchy when the unified line is the root
    expect(unit('12:cpu,cpuacct:/system.slice/a.service\n1:name=systemd:/system.slice/b.service\n0::/\n')).toBe('b.service');
  });

  it('finds container ids of docker, containerd, cri-o, podman and kubepods', () => {
    expect(container(`0::/system.slice/docker-${ID}.scope\n`)).toBe(ID);
    expect(container(`0::/docker/${ID}\n`)).toBe(ID);
    expect(container(`0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-${ID}.scope\n`)).toBe(ID);
    expect(container(`0::/kubepods.slice/kubepods-pod1.slice/crio-${ID}.scope\n`)).toBe(ID);
    expect(container(`0::/machine.slice/libpod-${ID}.scope/container\n`)).toBe(ID);
    expect(container(`11:memory:/kubepods/burstable/pod9f/${ID}\n0::/\n`)).toBe(ID);
    // conmon is the monitor, not the container
    expect(container(`0::/machine.slice/libpod-conmon-${ID}.scope\n`)).toBeUndefined();
    expect(container(`0::/docker/${ID.slice(1)}\n`)).toBeUndefined();
    expect(container(`0::/docker/${ID.toUpperCase()}\n`)).toBeUndefined();
    expect(container('0::/\n')).toBeUndefined();
  });

  it('refuses malformed lines', () => {
    expect(() => parseCgroupFile('0:/x\n')).toThrow(ProcFormatError);
    expect(() => parseCgroupFile('x::/a\n')).toThrow(/hierarchy/);
    expect(() => parseCgroupFile('0::relative\n')).toThrow(/start with/);
  });

  it('fuzz: garbage and hostile cgroup names never crash', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), (s) => onlyTypedErrors(() => container(s) ?? unit(s))));
    fc.assert(
      fc.property(fc.array(fc.string({ maxLength: 70 }), { maxLength: 8 }), (segs) => {
        const text = `0::/${segs.map((x) => x.replace(/[\n/]/g, '')).join('/')}\n`;
        const id = container(text);
        if (id !== undefined) expect(id).toMatch(/^[0-9a-f]{64}$/);
        const u = unit(text);
        if (u !== undefined) expect(u).not.toMatch(/[\n/]/);
      }),
    );
  });
});

describe('parseAccountFile', () => {
  it('maps ids to names; first line wins; skips comments, NIS lines and bad ids', () => {
    const m = parseAccountFile('/etc/passwd', '# c\nroot:x:0:0:root:/root:/bin/bash\n+nis::::::\nbad:x:zz:0::/:\ntoor:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:\nctl\u0001:x:7:7::/:\nshort:x:8\n');
    expect([...m]).toEqual([
      [0, 'root'],
      [65534, 'nobody'],
    ]);
  });
  it('reads the real /etc/passwd and /etc/group', () => {
    expect(parseAccountFile('/etc/passwd', readFileSync('/etc/passwd', 'utf8')).get(0)).toBe('root');
    expect(parseAccountFile('/etc/group', readFileSync('/etc/group', 'utf8')).get(65534)).toBe('nogroup');
  });
  it('fuzz', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 500 }), (s) => {
        const m = parseAccountFile('/etc/passwd', s);
        for (const [id, name] of m) {
          expect(Number.isInteger(id) && id >= 0 && id <= 0xffffffff).toBe(true);
          expect(name).not.toMatch(/[:\n]/);
        }
      }),
    );
  });
});
