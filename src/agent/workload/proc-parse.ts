/**
 * Parsers of the procfs and /etc files workload attestation reads. Pure: they
 * take the text and return typed values or throw ProcFormatError. Parts of
 * these files are chosen by the workload (its command name, its cgroup
 * names), so every parser bounds its input and never trusts a field's shape.
 */
import { ProcFormatError } from './errors.js';

/** Far above what the kernel writes for stat, status or cgroup. */
export const MAX_PROC_FILE_CHARS = 64 * 1024;
/** A passwd or group file larger than this is refused rather than indexed. */
export const MAX_ACCOUNT_FILE_CHARS = 16 * 1024 * 1024;
const MAX_ID = 0xffffffff;

function bounded(file: string, text: string, max: number): string {
  if (typeof text !== 'string') throw new ProcFormatError(file, 'not text');
  if (text.length > max) throw new ProcFormatError(file, `longer than ${max} characters`);
  return text;
}

function unsignedId(file: string, field: string, s: string): number {
  if (!/^\d{1,10}$/.test(s)) throw new ProcFormatError(file, `${field} ${JSON.stringify(s.slice(0, 20))} is not a decimal id`);
  const n = Number(s);
  if (n > MAX_ID) throw new ProcFormatError(file, `${field} ${s} is above 2^32-1`);
  return n;
}

/**
 * Field 22 (starttime, clock ticks after boot) of /proc/<pid>/stat. The
 * command name (field 2) is in parentheses and may itself hold spaces and
 * parentheses, so the fields are counted from the last ')'.
 */
export function parseStatStartTime(text: string): bigint {
  const file = '/proc/<pid>/stat';
  bounded(file, text, MAX_PROC_FILE_CHARS);
  const close = text.lastIndexOf(')');
  if (close < 0 || text.indexOf('(') < 0 || text.indexOf('(') > close) throw new ProcFormatError(file, 'no (comm) field');
  const rest = text.slice(close + 1).trim().split(' ');
  // rest[0] is field 3 (state), so field 22 is rest[19].
  const start = rest[19];
  if (start === undefined) throw new ProcFormatError(file, `only ${rest.length + 2} fields, starttime is field 22`);
  if (!/^\d{1,20}$/.test(start)) throw new ProcFormatError(file, 'starttime is not a decimal number');
  return BigInt(start);
}

/** The `Groups:` line of /proc/<pid>/status: the supplementary group ids. */
export function parseStatusGroups(text: string): number[] {
  const file = '/proc/<pid>/status';
  bounded(file, text, MAX_PROC_FILE_CHARS);
  const line = text.split('\n').find((l) => l.startsWith('Groups:'));
  if (line === undefined) throw new ProcFormatError(file, 'no Groups line');
  const ids = line.slice('Groups:'.length).trim();
  if (ids === '') return [];
  return ids.split(/[ \t]+/).map((s) => unsignedId(file, 'group', s));
}

export interface CgroupLine {
  readonly hierarchy: number;
  /** Empty for the cgroup v2 line; otherwise `cpu,cpuacct`, `name=systemd`, … */
  readonly controllers: string;
  readonly path: string;
}

/** /proc/<pid>/cgroup: `hierarchy-ID:controller-list:cgroup-path` per line. */
export function parseCgroupFile(text: string): CgroupLine[] {
  const file = '/proc/<pid>/cgroup';
  bounded(file, text, MAX_PROC_FILE_CHARS);
  const out: CgroupLine[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const a = line.indexOf(':');
    const b = a < 0 ? -1 : line.indexOf(':', a + 1);
    if (a < 0 || b < 0) throw new ProcFormatError(file, 'a line is not hierarchy:controllers:path');
    const hierarchy = unsignedId(file, 'hierarchy', line.slice(0, a));
    const path = line.slice(b + 1);
    // The path may contain ':' (it is the rest of the line), but always starts at the root.
    if (!path.startsWith('/')) throw new ProcFormatError(file, 'a cgroup path does not start with /');
    out.push({ hierarchy, controllers: line.slice(a + 1, b), path });
  }
  return out;
}

/** The unified (v2) path when the process has one, else the v1 `name=systemd` path: the tree systemd manages. */
function systemdTreePath(lines: readonly CgroupLine[]): string | undefined {
  const v2 = lines.find((l) => l.hierarchy === 0 && l.controllers === '');
  if (v2 && v2.path !== '/') return v2.path;
  return lines.find((l) => l.controllers === 'name=systemd')?.path ?? v2?.path;
}

const UNIT_NAME = /^[A-Za-z0-9:_.\\@-]{1,255}\.(service|scope|socket|mount|swap|timer|path|target|automount|device)$/;

/**
 * The systemd unit a process runs in, as systemd derives it from the cgroup
 * path: the first component after the leading `.slice` components, if it
 * names a unit (`/system.slice/nginx.service/x` → `nginx.service`).
 */
export function systemdUnitFromCgroup(lines: readonly CgroupLine[]): string | undefined {
  const path = systemdTreePath(lines);
  if (path === undefined) return undefined;
  for (const seg of path.split('/')) {
    if (seg === '' || seg.endsWith('.slice')) continue;
    return UNIT_NAME.test(seg) ? seg : undefined;
  }
  return undefined;
}

/**
 * Runtimes name a container's cgroup after its 64-hex id: cgroupfs drivers
 * as a bare component (`/docker/<id>`, `/kubepods/…/pod…/<id>`), the systemd
 * driver as `<runtime>-<id>.scope` (docker, cri-containerd, crio, libpod).
 * conmon's own scopes (`crio-conmon-…`, `libpod-conmon-…`) are not the container.
 */
const CONTAINER_SEGMENT = /^(?:(?:docker|cri-containerd|containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?$/;

export function containerIdFromCgroup(lines: readonly CgroupLine[]): string | undefined {
  // The unified line first; then v1 hierarchies, which all name the same container.
  const ordered = [...lines].sort((x, y) => (x.hierarchy === 0 ? -1 : 0) - (y.hierarchy === 0 ? -1 : 0));
  for (const l of ordered) {
    const segs = l.path.split('/');
    // The innermost match: a container nested in another reports itself.
    for (let i = segs.length - 1; i >= 0; i--) {
      const m = CONTAINER_SEGMENT.exec(segs[i]!);
      if (m) return m[1];
    }
  }
  return undefined;
}

/**
 * id → name from /etc/passwd or /etc/group (`name:x:id:…`). The first line
 * for an id wins, as getpwuid/getgrgid scanning the file would answer. NIS
 * `+`/`-` lines and comments are skipped; lines with a bad id are skipped, not fatal.
 */
export function parseAccountFile(file: string, text: string): Map<number, string> {
  bounded(file, text, MAX_ACCOUNT_FILE_CHARS);
  const names = new Map<number, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#') || line.startsWith('+') || line.startsWith('-')) continue;
    const fields = line.split(':');
    const name = fields[0];
    const idText = fields[2];
    if (name === undefined || name === '' || idText === undefined || fields.length < 4) continue;
    if (!/^\d{1,10}$/.test(idText)) continue;
    const id = Number(idText);
    if (id > MAX_ID || names.has(id)) continue;
    // A name with control characters could not be a selector anyone registered.
    if (/[\u0000-\u001f\u007f]/.test(name)) continue;
    names.set(id, name);
  }
  return names;
}
