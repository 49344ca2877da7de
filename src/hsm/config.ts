/** Configuration of a connection to one token through one PKCS#11 module. */
import { HsmConfigError } from './errors.js';

export type HsmKeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048' | 'rsa-3072';
export type HsmAlgorithm = 'ES256' | 'ES384' | 'RS256' | 'RS384' | 'PS256' | 'PS384';

export interface HsmConfig {
  /** Absolute path of the PKCS#11 module. */
  module: string;
  token: { label: string } | { serial: string };
  /** Where the user PIN is read from; never the PIN itself. */
  pin: { env: string } | { file: string };
  /** Pool size: logged-in sessions, i.e. signatures in flight at once. Default 4. Keep UV_THREADPOOL_SIZE ≥ this. */
  sessions?: number;
  /** Operations allowed to wait for a session before HsmBusyError. Default 4096. */
  maxQueue?: number;
  /** After a failed reconnect to a lost token, wait this long before trying again (fail fast meanwhile). Default 500 ms. */
  reconnectIntervalMs?: number;
  /** After the token rejects the PIN, re-read the PIN source at most this often (doubling up to a minute). Default 1000 ms. */
  pinRetryIntervalMs?: number;
}

export interface ResolvedHsmConfig {
  module: string;
  token: { label: string } | { serial: string };
  pin: { env: string } | { file: string };
  sessions: number;
  maxQueue: number;
  reconnectIntervalMs: number;
  pinRetryIntervalMs: number;
}

function intIn(path: string, v: unknown, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new HsmConfigError(path, `must be an integer from ${min} to ${max}`);
  return v;
}

export function resolveHsmConfig(c: HsmConfig): ResolvedHsmConfig {
  if (typeof c !== 'object' || c === null) throw new HsmConfigError('', 'must be an object');
  const known = new Set(['module', 'token', 'pin', 'sessions', 'maxQueue', 'reconnectIntervalMs', 'pinRetryIntervalMs']);
  for (const k of Object.keys(c)) if (!known.has(k)) throw new HsmConfigError(k, 'unknown key');
  if (typeof c.module !== 'string' || !c.module.startsWith('/')) throw new HsmConfigError('module', 'must be the absolute path of a PKCS#11 module');
  const t = c.token as Record<string, unknown> | undefined;
  if (typeof t !== 'object' || t === null) throw new HsmConfigError('token', 'must be { label } or { serial }');
  const tk = Object.keys(t);
  if (tk.length !== 1 || (tk[0] !== 'label' && tk[0] !== 'serial')) throw new HsmConfigError('token', 'must have exactly one of label, serial');
  const tv = t[tk[0]];
  // CK_TOKEN_INFO: label is 32 bytes, serialNumber 16, blank-padded.
  const maxLen = tk[0] === 'label' ? 32 : 16;
  if (typeof tv !== 'string' || tv.trim() === '' || Buffer.byteLength(tv) > maxLen) throw new HsmConfigError(`token.${tk[0]}`, `must be a non-empty string of at most ${maxLen} bytes`);
  const p = c.pin as Record<string, unknown> | undefined;
  if (typeof p !== 'object' || p === null) throw new HsmConfigError('pin', 'must be { env } or { file }');
  const pk = Object.keys(p);
  if (pk.length !== 1 || (pk[0] !== 'env' && pk[0] !== 'file')) throw new HsmConfigError('pin', 'must have exactly one of env, file (the PIN itself is never configuration)');
  const pv = p[pk[0]];
  if (pk[0] === 'env' && (typeof pv !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(pv))) throw new HsmConfigError('pin.env', 'must name an environment variable');
  if (pk[0] === 'file' && (typeof pv !== 'string' || !pv.startsWith('/'))) throw new HsmConfigError('pin.file', 'must be an absolute path');
  return {
    module: c.module,
    token: tk[0] === 'label' ? { label: tv } : { serial: tv },
    pin: pk[0] === 'env' ? { env: pv as string } : { file: pv as string },
    sessions: intIn('sessions', c.sessions, 1, 256, 4),
    maxQueue: intIn('maxQueue', c.maxQueue, 0, 1_000_000, 4096),
    reconnectIntervalMs: intIn('reconnectIntervalMs', c.reconnectIntervalMs, 0, 600_000, 500),
    pinRetryIntervalMs: intIn('pinRetryIntervalMs', c.pinRetryIntervalMs, 0, 600_000, 1000),
  };
}
