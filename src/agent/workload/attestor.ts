/**
 * Workload attestation: from the kernel's record of who opened a connection
 * (SO_PEERCRED) and what /proc says about that process, the selectors
 * registration entries are matched against. Nothing the caller says is used.
 *
 * A pid is only a name that the kernel reuses, so every answer is tied to a
 * ProcessStamp (pid + start time): the data is read between two reads of the
 * start time, and the server checks the stamp again just before it sends.
 */
import { readFileSync, readlinkSync } from 'node:fs';
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

/** A process, named so that a later process with the same pid is a different one. */
export interface ProcessStamp {
  readonly pid: number;
  /** Clock ticks after boot (field 22 of /proc/<pid>/stat). */
  readonly startTime: bigint;
}

export interface WorkloadAttestation {
  readonly stamp: ProcessStamp;
  /** Sorted by type:value. */
  readonly selectors: readonly Selector[];
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
   * Selectors of process `pid`, whose uid/gid the kernel recorded in `peer`.
   * `startedBy`: clock ticks after boot at which the connection was accepted;
   * a process that started later cannot be the one that connected.
   * Throws WorkloadAttestationError.
   */
  async attestPid(pid: number, peer: PeerCredentials, startedBy?: bigint): Promise<WorkloadAttestation> {
    if (!Number.isSafeInteger(pid) || pid <= 0) throw new WorkloadAttestationError('process-gone', pid, 'not a process id');
    const startTime = await this.#startTime(pid);
    // One tick of slack: uptime and starttime are rounded differently.
    if (startedBy !== undefined && startTime > startedBy + 1n) {
      throw new WorkloadAttestationError('process-newer-than-connection', pid, 'the pid belongs to a process started after the connection was made');
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
    if (this.#wants('unix:sha256')) {
      const hex = await this.#hasher.hash(join(dir, 'exe')).catch((e: unknown) => this.#fsFailure(pid, 'exe', e));
      add('unix', `sha256:${hex}`);
    }

    const unit = systemdUnitFromCgroup(cgroups);
    if (unit !== undefined) add('systemd', `unit:${unit}`);
    const container = containerIdFromCgroup(cgroups);
    if (container !== undefined) add('container', `id:${container}`);

    // Everything above must describe the process we started with.
    if ((await this.#startTime(pid)) !== startTime) {
      throw new WorkloadAttestationError('process-gone', pid, 'the process was replaced while it was being attested');
    }
    const selectors = out
      .map((s) => [`${s.type}:${s.value}`, s] as const)
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .filter((e, i, all) => i === 0 || all[i - 1]![0] !== e[0])
      .map((e) => e[1]);
    return { stamp: { pid, startTime }, selectors };
  }

  /** Whether the process named by `stamp` is still alive and is still the same process. */
  async isSameProcess(stamp: ProcessStamp): Promise<boolean> {
    try {
      return (await this.#startTime(stamp.pid)) === stamp.startTime;
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
  async #startTime(pid: number): Promise<bigint> {
    const text = this.#read(pid, join(this.#proc, String(pid), 'stat'));
    try {
      return parseStatStartTime(text);
    } catch (e) {
      throw new WorkloadAttestationError('proc-malformed', pid, (e as Error).message);
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
