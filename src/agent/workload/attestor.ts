/**
 * Workload attestation: from the kernel's record of who opened a connection
 * (SO_PEERCRED) and what /proc says about that process, the selectors
 * registration entries are matched against. Nothing the caller says is used.
 *
 * A pid is only a name that the kernel reuses, so every answer is tied to a
 * ProcessStamp (pid + start time + the executable it runs): the data is read
 * between two reads of the stamp, and the server checks the stamp again just
 * before it sends. The start time catches a reused pid; the executable's
 * device and inode catch a process that exec'd another program after it
 * connected (the start time survives exec).
 */
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PeerCredentials } from '../../os/peercred.js';
import { AccountFile } from './account-names.js';
import { ProcFormatError, WorkloadAttestationError } from './errors.js';
import { ExecutableHasher } from './exe-hash.js';
import {
  containerIdFromCgroup,
  MAX_PROC_FILE_CHARS,
  parseCgroupFile,
  parseStatStartTime,
  parseStatusGroups,
  systemdUnitFromCgroup,
} from './proc-parse.js';
import type { Selector, SelectorKind } from './selectors.js';

/** The file a process runs, as /proc/<pid>/exe leads to it (it stays the same file even if its path is replaced). */
export interface ExeIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
}

export const sameExe = (a: ExeIdentity, b: ExeIdentity): boolean => a.dev === b.dev && a.ino === b.ino;
const showExe = (e: ExeIdentity): string => `dev ${e.dev} inode ${e.ino}`;

/** A process, named so that a later process with the same pid, or the same process after an exec, is a different one. */
export interface ProcessStamp {
  readonly pid: number;
  /** Clock ticks after boot (field 22 of /proc/<pid>/stat). */
  readonly startTime: bigint;
  /** The executable; checked too when present (attestations always have it). */
  readonly exe?: ExeIdentity;
}

/** What the process that opened a connection was when the connection was accepted. */
export interface ProcessImage {
  readonly startTime: bigint;
  readonly exe: ExeIdentity;
  /** SHA-256 of the executable, when some entry uses `unix:sha256`; settles later (hashing is slow). */
  readonly sha256?: Promise<string | undefined>;
}

export interface WorkloadAttestation {
  readonly stamp: ProcessStamp & { readonly exe: ExeIdentity };
  /** Sorted by type:value. */
  readonly selectors: readonly Selector[];
  /** The `unix:sha256` value, when it was gathered. */
  readonly sha256?: string;
}

export interface WorkloadAttestorOptions {
  /** Default /proc; tests point it elsewhere only for parser-level checks. */
  readonly procRoot?: string;
  readonly passwdFile?: string;
  readonly groupFile?: string;
  /**
   * Whether some registration entry uses selectors of this kind. Only
   * `unix:sha256` is costly enough to be skipped when nobody asks for it.
   * Default: gather everything.
   */
  readonly wants?: (kind: SelectorKind) => boolean;
}

/** Kernel-written limit checks aside, a control character in a value means no entry could have named it. */
const CONTROL = /[\u0000-\u001f\u007f]/;

export class WorkloadAttestor {
  readonly #proc: string;
  readonly #passwd: AccountFile;
  readonly #group: AccountFile;
  readonly #hasher = new ExecutableHasher();
  readonly #wants: (kind: SelectorKind) => boolean;

  constructor(opts: WorkloadAttestorOptions = {}) {
    this.#proc = opts.procRoot ?? '/proc';
    this.#passwd = new AccountFile(opts.passwdFile ?? '/etc/passwd');
    this.#group = new AccountFile(opts.groupFile ?? '/etc/group');
    this.#wants = opts.wants ?? (() => true);
  }

  /**
   * What process `pid` is right now: start time and executable. Synchronous,
   * so the accept callback can record it before anything else runs (the
   * shorter the gap between connect and this, the less room for an exec).
   * Throws WorkloadAttestationError.
   */
  imageOf(pid: number): ProcessImage {
    if (!Number.isSafeInteger(pid) || pid <= 0) throw new WorkloadAttestationError('process-gone', pid, 'not a process id');
    const startTime = this.#startTime(pid);
    const exe = this.#exe(pid);
    if (this.#startTime(pid) !== startTime) throw new WorkloadAttestationError('process-gone', pid, 'the process was replaced while it was being examined');
    if (!this.#wants('unix:sha256')) return { startTime, exe };
    // Started now, awaited at the first call; a failure is judged then (as "no hash at accept").
    const sha256 = this.#hasher.hash(join(this.#proc, String(pid), 'exe')).catch(() => undefined);
    return { startTime, exe, sha256 };
  }

  /**
   * Selectors of process `pid`, whose uid/gid the kernel recorded in `peer`.
   * `startedBy`: clock ticks after boot at which the connection was accepted;
   * a process that started later cannot be the one that connected.
   * `boundTo`: the process as it was when its connection was accepted; a
   * process that has exec'd since (or is another one) is refused with 'exe-changed'.
   * Throws WorkloadAttestationError.
   */
  async attestPid(pid: number, peer: PeerCredentials, startedBy?: bigint, boundTo?: ProcessImage): Promise<WorkloadAttestation> {
    if (!Number.isSafeInteger(pid) || pid <= 0) throw new WorkloadAttestationError('process-gone', pid, 'not a process id');
    const startTime = this.#startTime(pid);
    // One tick of slack: uptime and starttime are rounded differently.
    if (startedBy !== undefined && startTime > startedBy + 1n) {
      throw new WorkloadAttestationError('process-newer-than-connection', pid, 'the pid belongs to a process started after the connection was made');
    }
    if (boundTo !== undefined && boundTo.startTime !== startTime) {
      throw new WorkloadAttestationError('process-newer-than-connection', pid, 'the pid belongs to another process than the one that opened the connection');
    }
    const exe = this.#exe(pid);
    if (boundTo !== undefined && !sameExe(boundTo.exe, exe)) {
      throw new WorkloadAttestationError(
        'exe-changed',
        pid,
        `the process runs another executable (${showExe(exe)}) than when it opened the connection (${showExe(boundTo.exe)}): it exec'd since`,
      );
    }
    const dir = join(this.#proc, String(pid));
    const status = this.#read(pid, join(dir, 'status'));
    const cgroup = this.#read(pid, join(dir, 'cgroup'));
    let exePath: string;
    try {
      exePath = readlinkSync(join(dir, 'exe'));
    } catch (e) {
      this.#fsFailure(pid, 'exe', e);
    }
    const out: Selector[] = [];
    const add = (type: string, value: string): void => {
      if (!CONTROL.test(value)) out.push({ type, value });
    };

    add('unix', `uid:${peer.uid}`);
    add('unix', `gid:${peer.gid}`);
    const [user, group] = await Promise.all([this.#passwd.nameOf(peer.uid), this.#group.nameOf(peer.gid)]);
    if (user !== undefined) add('unix', `user:${user}`);
    if (group !== undefined) add('unix', `group:${group}`);

    let groups: number[];
    let cgroups;
    try {
      groups = parseStatusGroups(status);
      cgroups = parseCgroupFile(cgroup);
    } catch (e) {
      throw new WorkloadAttestationError('proc-malformed', pid, (e as Error).message);
    }
    const supplementary = await Promise.all(groups.map(async (g) => [g, await this.#group.nameOf(g)] as const));
    for (const [g, name] of supplementary) {
      add('unix', `supplementary_gid:${g}`);
      if (name !== undefined) add('unix', `supplementary_group:${name}`);
    }

    add('unix', `path:${exePath}`);
    let sha256: string | undefined;
    if (this.#wants('unix:sha256')) {
      sha256 = await this.#hasher.hash(join(dir, 'exe')).catch((e: unknown) => this.#fsFailure(pid, 'exe', e));
      const atAccept = await boundTo?.sha256;
      // Same file, other content: rewritten in place since the connection was made.
      if (atAccept !== undefined && atAccept !== sha256) {
        throw new WorkloadAttestationError('exe-changed', pid, 'the executable\'s content changed since the process opened the connection');
      }
      add('unix', `sha256:${sha256}`);
    }

    const unit = systemdUnitFromCgroup(cgroups);
    if (unit !== undefined) add('systemd', `unit:${unit}`);
    const container = containerIdFromCgroup(cgroups);
    if (container !== undefined) add('container', `id:${container}`);

    // Everything above must describe the process, and the image, we started with.
    if (this.#startTime(pid) !== startTime) {
      throw new WorkloadAttestationError('process-gone', pid, 'the process was replaced while it was being attested');
    }
    const exeAfter = this.#exe(pid);
    if (!sameExe(exeAfter, exe)) {
      throw new WorkloadAttestationError('exe-changed', pid, `the process exec'd another executable (${showExe(exeAfter)}) while it was being attested`);
    }
    const selectors = out
      .map((s) => [`${s.type}:${s.value}`, s] as const)
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .filter((e, i, all) => i === 0 || all[i - 1]![0] !== e[0])
      .map((e) => e[1]);
    return { stamp: { pid, startTime, exe }, selectors, ...(sha256 !== undefined ? { sha256 } : {}) };
  }

  /** Whether the process named by `stamp` is still alive, is still the same process and (when the stamp names one) runs the same executable. */
  async isSameProcess(stamp: ProcessStamp): Promise<boolean> {
    try {
      if (this.#startTime(stamp.pid) !== stamp.startTime) return false;
      return stamp.exe === undefined || sameExe(this.#exe(stamp.pid), stamp.exe);
    } catch {
      return false;
    }
  }

  /** How many executables' hashes are kept (for the memory benchmark). */
  get cachedExecutableHashes(): number {
    return this.#hasher.cachedCount;
  }

  // procfs files are generated in memory by the kernel: reading them
  // synchronously costs microseconds, where a trip through libuv's thread
  // pool costs far more under load (measured in bench/workload-api.ts).
  #startTime(pid: number): bigint {
    const text = this.#read(pid, join(this.#proc, String(pid), 'stat'));
    try {
      return parseStatStartTime(text);
    } catch (e) {
      throw new WorkloadAttestationError('proc-malformed', pid, (e as Error).message);
    }
  }

  /** stat (not lstat) of /proc/<pid>/exe: the executable file itself, even if unlinked or renamed since. */
  #exe(pid: number): ExeIdentity {
    try {
      const st = statSync(join(this.#proc, String(pid), 'exe'), { bigint: true });
      return { dev: st.dev, ino: st.ino };
    } catch (e) {
      return this.#fsFailure(pid, 'exe', e);
    }
  }

  #read(pid: number, path: string): string {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      return this.#fsFailure(pid, path.slice(path.lastIndexOf('/') + 1), e);
    }
    if (text.length > MAX_PROC_FILE_CHARS) throw new WorkloadAttestationError('proc-malformed', pid, `${path} is implausibly large`);
    return text;
  }

  #fsFailure(pid: number, what: string, e: unknown): never {
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ESRCH') throw new WorkloadAttestationError('process-gone', pid, `no ${what} in /proc: the process has exited`);
    throw new WorkloadAttestationError('proc-unreadable', pid, `cannot read ${what} (${code ?? 'error'})`);
  }
}

/** Clock ticks since boot now (USER_HZ is 100 on every architecture Node runs on), from /proc/uptime. */
export async function uptimeTicks(procRoot = '/proc'): Promise<bigint> {
  const text = readFileSync(join(procRoot, 'uptime'), 'utf8');
  const m = /^(\d+)\.(\d{2})\s/.exec(text);
  if (!m) throw new ProcFormatError('/proc/uptime', 'not "<seconds>.<centiseconds> …"');
  return BigInt(m[1]!) * 100n + BigInt(m[2]!);
}
