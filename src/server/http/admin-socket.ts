/**
 * The admin socket's file: a Unix socket of mode 0600 in a directory of mode
 * 0700, both owned by the server's user, so that only that user (and root)
 * can connect; the directories above it pass the same checks as every
 * socket directory of keel (src/os/socket-dir.ts). A stale socket left by a
 * crash is removed; a live one is not.
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, isAbsolute } from 'node:path';
import { ensureSafeSocketDirectory, UnsafeSocketDirectoryError } from '../../os/socket-dir.js';

export class AdminSocketError extends Error {
  override name = 'AdminSocketError';
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`admin socket ${path}: ${reason}`);
  }
}

/** Linux limits sun_path to 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Makes the directory (0700) if needed, checks it, and clears a stale socket. */
export async function prepareAdminSocket(path: string): Promise<void> {
  if (!isAbsolute(path)) throw new AdminSocketError(path, 'must be an absolute path');
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) throw new AdminSocketError(path, `longer than ${MAX_SOCKET_PATH} bytes, the limit of a Unix socket path`);
  const uid = process.getuid?.();
  // The walk every socket of keel goes through: no directory on the way may be replaceable by someone else.
  const dir = dirname(path);
  try {
    ensureSafeSocketDirectory(dir, { createMode: 0o700, ...(uid !== undefined ? { ownerUid: uid } : {}) });
  } catch (e) {
    if (e instanceof UnsafeSocketDirectoryError) throw new AdminSocketError(path, `unsafe directory: ${e.message}`);
    throw e;
  }
  // Stricter for the admin socket's own directory: a real directory, the server's (not root's), 0700.
  const st = lstatSync(dir);
  if (!st.isDirectory()) throw new AdminSocketError(path, `${dir} is not a directory`);
  if (uid !== undefined && st.uid !== uid) throw new AdminSocketError(path, `directory ${dir} is owned by uid ${st.uid}, not the server's uid ${uid}`);
  // Anyone who can write the directory could swap the socket; anyone who can search it could connect.
  if ((st.mode & 0o077) !== 0) {
    throw new AdminSocketError(path, `directory ${dir} has mode ${(st.mode & 0o777).toString(8)}; it must be 700 (private to the server's user)`);
  }
  let existing;
  try {
    existing = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!existing.isSocket()) throw new AdminSocketError(path, 'exists and is not a socket');
  if (await canConnect(path)) throw new AdminSocketError(path, 'another server is listening on it');
  unlinkSync(path);
}

/** After listen: the socket itself 0600, whatever the umask was. */
export function restrictAdminSocket(path: string): void {
  chmodSync(path, 0o600);
}
