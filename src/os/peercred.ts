/**
 * Who is at the other end of a Unix socket, as the kernel recorded it when
 * the connection was made (SO_PEERCRED), never as the peer claims.
 */
import type { Socket } from 'node:net';
import { nativeAddon } from './native-addon.js';

export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

export class PeerCredentialsError extends Error {
  override name = 'PeerCredentialsError';
  /** errno name from getsockopt (EBADF, ENOTSOCK, ENOPROTOOPT, ...), or NO_FD. */
  readonly code: string;
  constructor(message: string, code: string) {
    super(message);
    this.code = code;
  }
}

function fdOf(socket: Socket): number {
  // Node keeps the descriptor on the libuv handle of a Pipe (Unix socket) or TCP socket.
  const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new PeerCredentialsError('the socket has no file descriptor (not connected, destroyed, or not a Unix socket)', 'NO_FD');
  }
  return fd;
}

function wrap<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const err = e as Error & { code?: string };
    throw new PeerCredentialsError(`${what}: ${err.message}`, err.code ?? 'EUNKNOWN');
  }
}

/** SO_PEERCRED of a file descriptor of a connected Unix socket. */
export function peerCredentials(fd: number): PeerCredentials {
  if (!Number.isInteger(fd) || fd < 0) throw new PeerCredentialsError(`bad file descriptor ${String(fd)}`, 'EBADF');
  return wrap('reading peer credentials', () => nativeAddon().peerCredentials(fd));
}

/** Supplementary group ids of the peer (SO_PEERGROUPS, Linux 4.13+). */
export function peerGroups(fd: number): number[] {
  if (!Number.isInteger(fd) || fd < 0) throw new PeerCredentialsError(`bad file descriptor ${String(fd)}`, 'EBADF');
  return wrap('reading peer groups', () => nativeAddon().peerGroups(fd));
}

/** Peer credentials of a connected Unix socket (e.g. one a net.Server accepted). */
export function peerCredentialsOf(socket: Socket): PeerCredentials {
  return peerCredentials(fdOf(socket));
}

/** Supplementary groups of the peer of a connected Unix socket. */
export function peerGroupsOf(socket: Socket): number[] {
  return peerGroups(fdOf(socket));
}
