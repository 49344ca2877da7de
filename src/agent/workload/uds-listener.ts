/**
 * The Unix socket the Workload API listens on. Access control is by the
 * caller's kernel-recorded identity, not file permissions, so the socket is
 * world-writable. What keeps it from being replaced is its directory chain:
 * every directory on the way to it must be one that only this uid or root can
 * change (src/os/socket-dir.ts has the rules); missing ones are created 0755.
 */
import { chmod, lstat, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { dirname, isAbsolute } from 'node:path';
import { ensureSafeSocketDirectory, UnsafeSocketDirectoryError } from '../../os/socket-dir.js';
import { WorkloadApiStartError } from './errors.js';

/** sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
/** Capped by the kernel at net.core.somaxconn (4096 by default since Linux 5.4). */
const LISTEN_BACKLOG = 4096;

/** Whether something accepts connections on `path` right now. */
function isLive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function prepareSocketPath(path: string): Promise<void> {
  if (!isAbsolute(path)) throw new WorkloadApiStartError('bad-socket-path', path, 'the socket path must be absolute');
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    throw new WorkloadApiStartError('bad-socket-path', path, `the socket path is longer than ${MAX_SOCKET_PATH_BYTES} bytes`);
  }
  try {
    // Other uids must be able to traverse to the socket, hence 0755.
    ensureSafeSocketDirectory(dirname(path), { createMode: 0o755 });
  } catch (e) {
    if (e instanceof UnsafeSocketDirectoryError) {
      throw new WorkloadApiStartError('unsafe-socket-directory', path, `refusing to listen: ${e.message}`, e.directory);
    }
    throw e;
  }
  const st = await lstat(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw new WorkloadApiStartError('bad-socket-path', path, `cannot inspect the socket path (${e.code ?? 'error'})`);
  });
  if (st === undefined) return;
  if (!st.isSocket()) throw new WorkloadApiStartError('bad-socket-path', path, 'the path exists and is not a socket; refusing to remove it');
  if (await isLive(path)) throw new WorkloadApiStartError('socket-in-use', path, 'another process is listening on the socket');
  // A socket file nobody listens on: left by an agent that did not shut down cleanly.
  await unlink(path);
}

/** Listens on `path` (after the checks above) and calls `onConnection` with every accepted socket. */
export async function listenUnixSocket(path: string, onConnection: (socket: Socket) => void): Promise<Server> {
  await prepareSocketPath(path);
  const server = createServer({ allowHalfOpen: false }, onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'EADDRINUSE'
          ? new WorkloadApiStartError('socket-in-use', path, 'another process took the socket path while this one started')
          : new WorkloadApiStartError('listen-failed', path, `listen failed (${e.code ?? e.message})`),
      );
    });
    // A node's workloads often start together; Node's default backlog (511)
    // makes the 512th simultaneous connect fail with EAGAIN on a Unix socket.
    server.listen({ path, backlog: LISTEN_BACKLOG }, () => resolve());
  });
  await chmod(path, 0o777);
  return server;
}
