/**
 * Value types shared by keel's configuration schemas: durations, sizes,
 * file paths (resolved against the directory of the file being loaded),
 * `host:port` addresses, trust domains and secret references.
 */
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { TrustDomain } from '../spiffe/id.js';

/** Echo a user's value in an error, short and quoted (only for values that are never secrets). */
export function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return `a ${typeof v}`;
}

// ── base directory for relative paths ─────────────────────────────────────────

let baseDirs: string[] = [];

/** Runs `fn` with relative paths resolved against `dir` (the config file's directory). */
export function withBaseDir<T>(dir: string, fn: () => T): T {
  baseDirs = [...baseDirs, dir];
  try {
    return fn();
  } finally {
    baseDirs = baseDirs.slice(0, -1);
  }
}

function baseDir(): string {
  return baseDirs[baseDirs.length - 1] ?? process.cwd();
}

/** A file or directory path; relative ones are resolved against the config file's directory. */
export const configPath = () =>
  z.string().transform((p, ctx) => {
    if (p.length === 0 || p.length > 4096 || p.includes('\0')) {
      ctx.addIssue({ code: 'custom', message: 'expected a file path' });
      return z.NEVER;
    }
    return isAbsolute(p) ? resolve(p) : resolve(baseDir(), p);
  });

// ── durations and sizes ──────────────────────────────────────────────────────

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };
const DURATION_RE = /^(?:\d{1,9}[smhd])+$/;
/** Ten years: anything longer is a typo. */
const MAX_DURATION = 10 * 365 * 86400;

/** `90s`, `15m`, `1h30m`, `7d` → seconds; undefined when not a duration. */
export function parseDuration(text: string): number | undefined {
  if (!DURATION_RE.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(/(\d+)([smhd])/g)) total += Number(m[1]) * UNIT_SECONDS[m[2]!]!;
  return total;
}

/** A duration written as a string (`90s`, `1h`, `24h`, `7d`), parsed into whole seconds > 0. */
export const duration = () =>
  z.unknown().transform((v, ctx) => {
    const secs = typeof v === 'string' ? parseDuration(v) : undefined;
    if (secs === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected a duration like "24h", got ${shown(v)}` });
      return z.NEVER;
    }
    if (secs <= 0 || secs > MAX_DURATION) {
      ctx.addIssue({ code: 'custom', message: `expected a duration between 1s and 3650d, got ${shown(v)}` });
      return z.NEVER;
    }
    return secs;
  });

const SIZE_UNITS: Record<string, number> = { '': 1, B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };
const SIZE_RE = /^(\d{1,12})\s?(B|KB|MB|GB|KiB|MiB|GiB)?$/;

/** `512`, `64KiB`, `10MB` → bytes; undefined when not a size. */
export function parseSize(text: string): number | undefined {
  const m = SIZE_RE.exec(text);
  if (!m) return undefined;
  const bytes = Number(m[1]) * SIZE_UNITS[m[2] ?? '']!;
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** A size in bytes, written as a number or with a unit (`64KiB`, `10MB`). */
export const size = () =>
  z.unknown().transform((v, ctx) => {
    const bytes = typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : typeof v === 'string' ? parseSize(v) : undefined;
    if (bytes === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected a size like "64KiB" or "10MB", got ${shown(v)}` });
      return z.NEVER;
    }
    return bytes;
  });

// ── addresses and names ──────────────────────────────────────────────────────

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export function parseHostPort(text: string): HostPort | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  const host = m[1] ?? m[2]!;
  if (m[2] !== undefined && (host.length > 253 || !HOST_RE.test(host))) return undefined;
  return { host, port };
}

/** `host:port` or `[ipv6]:port`. */
export const hostPort = () =>
  z.unknown().transform((v, ctx) => {
    const hp = typeof v === 'string' ? parseHostPort(v) : undefined;
    if (!hp) {
      ctx.addIssue({ code: 'custom', message: `expected host:port like "0.0.0.0:8081", got ${shown(v)}` });
      return z.NEVER;
    }
    return hp;
  });

export const trustDomain = () =>
  z.string().transform((v, ctx) => {
    try {
      return TrustDomain.parse(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });

export type SecretSource = { readonly kind: 'env'; readonly name: string } | { readonly kind: 'file'; readonly path: string };

/**
 * Where a secret (the HSM PIN) comes from: `env:NAME` or `file:/path`. The
 * value itself never appears in errors: someone may have written the PIN here.
 */
export const secretSource = () =>
  z.unknown().transform((v, ctx): SecretSource => {
    if (typeof v === 'string') {
      const env = /^env:([A-Za-z_][A-Za-z0-9_]{0,127})$/.exec(v);
      if (env) return { kind: 'env', name: env[1]! };
      if (v.startsWith('file:') && v.length > 5 && v.length < 4096 && !v.includes('\0')) {
        const p = v.slice(5);
        return { kind: 'file', path: isAbsolute(p) ? resolve(p) : resolve(baseDir(), p) };
      }
    }
    ctx.addIssue({ code: 'custom', message: 'expected env:NAME or file:PATH (the secret itself never goes in the file)' });
    return z.NEVER;
  });

export const logLevel = () => z.enum(['debug', 'info', 'warn', 'error']).default('info');

/** Lowercase hex of a SHA-256 (upper case accepted and folded). */
export const sha256Hex = () =>
  z.string().transform((v, ctx) => {
    if (!/^[0-9a-fA-F]{64}$/.test(v)) {
      ctx.addIssue({ code: 'custom', message: `expected 64 hex digits (SHA-256), got ${shown(v)}` });
      return z.NEVER;
    }
    return v.toLowerCase();
  });
