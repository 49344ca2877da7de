/**
 * Structured JSON logs, one object per line. Small on purpose: keel logs a
 * few lines per attestation or issuance, and every line must be parseable by
 * whatever collects them. Fields named like secrets are redacted so that a
 * careless `log.info({ pin })` cannot leak one.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_KEY = /(^|_)(pin|password|passwd|secret|private_?key|token|authorization)$/i;

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(bindings: LogFields): Logger;
  readonly level: LogLevel;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Where lines go; stderr by default. */
  write?: (line: string) => void;
  clock?: () => Date;
}

function clean(value: unknown, depth: number): unknown {
  if (value === null || value === undefined) return value;
  if (typeof value === 'bigint') return value.toString();
  if (Buffer.isBuffer(value)) return value.toString('hex');
  if (value instanceof Error) {
    const out: LogFields = { name: value.name, message: value.message };
    for (const k of ['code', 'reason', 'rule', 'rc'] as const) {
      const v = (value as unknown as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = v;
    }
    return out;
  }
  if (value instanceof Date) return value.toISOString();
  if (typeof value !== 'object') return value;
  if (depth > 4) return '[…]';
  if (Array.isArray(value)) return value.slice(0, 100).map((v) => clean(v, depth + 1));
  const out: LogFields = {};
  for (const [k, v] of Object.entries(value as LogFields)) {
    out[k] = SECRET_KEY.test(k) ? '[redacted]' : clean(v, depth + 1);
  }
  return out;
}

export function createLogger(opts: LoggerOptions = {}, bindings: LogFields = {}): Logger {
  const level = opts.level ?? 'info';
  const write = opts.write ?? ((line: string) => process.stderr.write(line + '\n'));
  const clock = opts.clock ?? (() => new Date());
  const emit = (lvl: LogLevel, msg: string, fields?: LogFields): void => {
    if (RANK[lvl] < RANK[level]) return;
    const rec = { time: clock().toISOString(), level: lvl, msg, ...(clean(bindings, 0) as LogFields), ...(fields ? (clean(fields, 0) as LogFields) : {}) };
    write(JSON.stringify(rec));
  };
  return {
    level,
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (b) => createLogger(opts, { ...bindings, ...b }),
  };
}

/** A logger that drops everything (tests, library use). */
export const silentLogger: Logger = createLogger({ level: 'error', write: () => undefined });
