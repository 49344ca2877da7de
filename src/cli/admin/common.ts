/** Flags and helpers every admin command shares. */
import { parseDuration } from '../../config/values.js';
import { CliError } from '../command.js';
import { AdminClient, DEFAULT_ADMIN_SOCKET } from './client.js';

export const COMMON_FLAGS = {
  socket: { type: 'string' },
  json: { type: 'boolean' },
} as const;

export const COMMON_USAGE = `[--socket PATH] [--json]`;

/** --socket, then $KEEL_ADMIN_SOCKET, then the default path. */
export function clientFor(values: { socket?: string | undefined }): AdminClient {
  return new AdminClient(values.socket ?? process.env.KEEL_ADMIN_SOCKET ?? DEFAULT_ADMIN_SOCKET);
}

export function usageError(message: string): CliError {
  return new CliError(message, 2);
}

export function required<T>(value: T | undefined, flag: string): T {
  if (value === undefined || value === '') throw usageError(`--${flag} is required`);
  return value;
}

/** A TTL flag: `90s`, `15m`, `1h`, or a number of seconds. */
export function ttlFlag(text: string, flag: string): number {
  const secs = /^\d{1,9}$/.test(text) ? Number(text) : parseDuration(text);
  if (secs === undefined || secs <= 0) throw usageError(`--${flag}: expected a duration like 1h, 15m or 3600, got ${JSON.stringify(text)}`);
  return secs;
}

/** `spiffe://<td>/keel/server`, the parent of node-group entries, from an ID of that trust domain. */
export function serverIdFor(spiffeId: string): string {
  const m = /^spiffe:\/\/([^/]+)/.exec(spiffeId);
  if (!m) throw usageError(`--spiffe-id ${JSON.stringify(spiffeId)} is not a SPIFFE ID`);
  return `spiffe://${m[1]}/keel/server`;
}

export const enc = encodeURIComponent;
