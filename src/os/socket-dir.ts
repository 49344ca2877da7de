/**
 * Whether a Unix socket's directory is safe to listen in: nobody but us (the
 * effective uid) and root can rename, replace or redirect any directory the
 * kernel walks to reach it. A socket under a directory someone else can
 * write can be renamed away and replaced by theirs, and every client that
 * connects afterwards talks to the impostor.
 *
 * The rules, for every directory in which a name of the path is looked up
 * (symbolic links are followed by hand, so the directories a link leads
 * through are judged too):
 * - it is owned by us or by root: its owner can always chmod it writable;
 * - it is not writable by group or others (any ACL granting write shows in
 *   the group bits, which then hold the ACL mask);
 * - except an ancestor that is world-writable with the sticky bit (/tmp):
 *   there only an entry's owner (or the directory's owner, trusted above)
 *   may rename or remove it, so it is safe iff the entry we go through is
 *   ours or root's. Others can still create *new* names there, which is why
 *   the socket's own directory may not be sticky-writable: someone could
 *   take the socket's name while it does not exist (between a stale file's
 *   removal and bind) or fill the directory.
 *
 * Missing directories are created (mode `mode`, whatever the umask) one at a
 * time, each only after the directory it goes into has passed the rules, so a
 * refusal leaves nothing behind in a place someone else controls.
 */
import { chmodSync, lstatSync, mkdirSync, readlinkSync, type Stats } from 'node:fs';
import { posix } from 'node:path';

export type UnsafeDirectoryReason =
  | 'foreign-owner' // owned by a uid other than ours or root's
  | 'writable-by-others' // group- or other-writable (and not a sticky ancestor)
  | 'foreign-entry-in-sticky' // a sticky world-writable dir whose entry on the path belongs to someone else
  | 'not-a-directory'
  | 'symlink-loop'
  | 'unreadable'; // lstat, readlink or mkdir failed

export class UnsafeSocketDirectoryError extends Error {
  override readonly name = 'UnsafeSocketDirectoryError';
  constructor(
    /** The directory (or link) that fails the rules, as the walk reached it. */
    readonly directory: string,
    readonly reason: UnsafeDirectoryReason,
    detail: string,
  ) {
    super(`${directory}: ${detail}`);
  }
}

export interface SocketDirectoryOptions {
  /** Create missing directories with this mode (e.g. 0o755). Without it, a missing directory is an error. */
  readonly createMode?: number;
  /** Owners trusted besides root. Default: the effective uid of this process. */
  readonly ownerUid?: number;
}

/** Linux follows at most 40 links in one resolution (MAXSYMLINKS). */
const MAX_LINKS = 40;
const STICKY = 0o1000;
const GROUP_OR_OTHER_WRITE = 0o022;

function mode(st: Stats): string {
  return (st.mode & 0o7777).toString(8).padStart(4, '0');
}

function fsError(path: string, what: string, e: unknown): UnsafeSocketDirectoryError {
  const code = (e as NodeJS.ErrnoException).code ?? 'error';
  return new UnsafeSocketDirectoryError(path, 'unreadable', `cannot ${what} (${code})`);
}

function lstatOrMissing(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fsError(path, 'inspect it', e);
  }
}

/**
 * Resolves `dir` (absolute) component by component, creating what is missing
 * when `createMode` is given, and throws UnsafeSocketDirectoryError at the
 * first directory that breaks the rules above. Returns the resolved path.
 */
export function ensureSafeSocketDirectory(dir: string, opts: SocketDirectoryOptions = {}): string {
  if (!posix.isAbsolute(dir)) throw new UnsafeSocketDirectoryError(dir, 'not-a-directory', 'not an absolute path');
  const me = opts.ownerUid ?? process.geteuid?.() ?? 0;
  const trusted = (uid: number): boolean => uid === 0 || uid === me;
  const ownerProblem = (path: string, st: Stats): UnsafeSocketDirectoryError | undefined =>
    trusted(st.uid) ? undefined : new UnsafeSocketDirectoryError(path, 'foreign-owner', `owned by uid ${st.uid}, not by root or uid ${me}: its owner can replace anything below it`);

  let cur = '/';
  let curSt = lstatSync('/');
  let pending = dir.split('/');
  let links = 0;
  for (;;) {
    const name = pending.shift();
    if (name === undefined) break;
    if (name === '' || name === '.') continue;
    if (name === '..') {
      // An ancestor of `cur` on this walk: judged already when we went through it.
      cur = posix.dirname(cur);
      curSt = lstatSync(cur);
      continue;
    }
    // `cur` is a directory a name is looked up in: who could change that entry?
    const owner = ownerProblem(cur, curSt);
    if (owner) throw owner;
    const writable = (curSt.mode & GROUP_OR_OTHER_WRITE) !== 0;
    const sticky = (curSt.mode & STICKY) !== 0;
    if (writable && !sticky) {
      throw new UnsafeSocketDirectoryError(cur, 'writable-by-others', `mode ${mode(curSt)} lets group or others rename what is in it; it must not be group- or other-writable`);
    }
    const next = cur === '/' ? `/${name}` : `${cur}/${name}`;
    let st = lstatOrMissing(next);
    if (st === undefined) {
      if (opts.createMode === undefined) throw new UnsafeSocketDirectoryError(next, 'not-a-directory', 'does not exist');
      try {
        mkdirSync(next, { mode: opts.createMode });
        // mkdir's mode is filtered by the umask: make it exactly what was asked.
        chmodSync(next, opts.createMode);
      } catch (e) {
        // Someone made it first (possible in a sticky directory): judged like any other below.
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(next, 'create it', e);
      }
      st = lstatOrMissing(next);
      if (st === undefined) throw new UnsafeSocketDirectoryError(next, 'unreadable', 'vanished right after it was created');
    }
    if (sticky && !trusted(st.uid)) {
      throw new UnsafeSocketDirectoryError(
        next,
        'foreign-entry-in-sticky',
        `owned by uid ${st.uid} inside the world-writable directory ${cur}, so that uid can rename or replace it`,
      );
    }
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) throw new UnsafeSocketDirectoryError(next, 'symlink-loop', `more than ${MAX_LINKS} symbolic links`);
      let target: string;
      try {
        target = readlinkSync(next);
      } catch (e) {
        throw fsError(next, 'read the link', e);
      }
      pending = [...target.split('/'), ...pending];
      if (target.startsWith('/')) {
        cur = '/';
        curSt = lstatSync('/');
      }
      continue;
    }
    if (!st.isDirectory()) throw new UnsafeSocketDirectoryError(next, 'not-a-directory', 'is not a directory');
    cur = next;
    curSt = st;
  }
  // The socket's own directory: ours or root's, and no one else may write in it, sticky or not.
  const owner = ownerProblem(cur, curSt);
  if (owner) throw owner;
  if ((curSt.mode & GROUP_OR_OTHER_WRITE) !== 0) {
    throw new UnsafeSocketDirectoryError(cur, 'writable-by-others', `mode ${mode(curSt)}: the socket's directory must not be group- or other-writable (not even sticky)`);
  }
  return cur;
}
