/**
 * Loads one YAML configuration file against a zod schema. Every problem is
 * collected into one ConfigError with the dotted path of the offending key;
 * nothing else escapes (YAML syntax, alias bombs, oversized files included).
 */
import { closeSync, fstatSync, openSync, readFileSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigIssue } from './errors.js';
import { shown, withBaseDir } from './values.js';

/** Configuration files are small; a bigger one is a mistake (or an attack on the parser). */
export const MAX_CONFIG_BYTES = 1 << 20;

export function formatKeyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += (out ? '.' : '') + String(seg);
  }
  return out || '(root)';
}

/** Turns zod's issues into ours: unknown keys one by one, messages in the house style. */
function toIssues(issues: readonly z.core.$ZodIssue[]): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const i of issues) {
    switch (i.code) {
      case 'unrecognized_keys':
        for (const k of i.keys) out.push({ path: formatKeyPath([...i.path, k]), message: 'unknown key' });
        break;
      case 'invalid_type':
        out.push({
          path: formatKeyPath(i.path),
          message: i.input === undefined ? `required (${i.expected})` : `expected ${i.expected}, got ${shown(i.input)}`,
        });
        break;
      case 'invalid_value':
        out.push({
          path: formatKeyPath(i.path),
          message: `expected one of ${i.values.map((v) => JSON.stringify(v)).join(', ')}, got ${shown(i.input)}`,
        });
        break;
      case 'invalid_union':
        out.push({ path: formatKeyPath(i.path), message: i.message });
        break;
      default:
        out.push({ path: formatKeyPath(i.path), message: i.message });
    }
  }
  return out;
}

/** Strings that look like `${VAR}` are refused rather than silently taken literally. */
function interpolationIssues(value: unknown, path: PropertyKey[], out: ConfigIssue[]): void {
  if (typeof value === 'string') {
    if (value.includes('${')) {
      out.push({
        path: formatKeyPath(path),
        message: 'environment variables are not interpolated; secrets come from a pin_source (env:NAME or file:PATH)',
      });
    }
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => interpolationIssues(v, [...path, i], out));
  } else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) interpolationIssues(v, [...path, k], out);
  }
}

/**
 * Parses YAML text against `schema`. `file` names the source in errors and
 * `baseDir` is where relative paths start (the file's directory).
 */
export function parseConfigText<S extends z.ZodType>(text: string, schema: S, options: { file: string; baseDir: string }): z.output<S> {
  const { file, baseDir } = options;
  if (text.length > MAX_CONFIG_BYTES) throw new ConfigError(file, [{ path: '(file)', message: `larger than ${MAX_CONFIG_BYTES} bytes` }]);
  let value: unknown;
  try {
    const doc = parseDocument(text, { schema: 'core', uniqueKeys: true, merge: false, prettyErrors: false });
    if (doc.errors.length) {
      throw new ConfigError(
        file,
        doc.errors.map((e) => ({
          path: '(file)',
          message: `YAML ${e.linePos?.[0] ? `line ${e.linePos[0].line} column ${e.linePos[0].col}` : ''}: ${e.message.split('\n')[0]}`,
        })),
      );
    }
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(file, [{ path: '(file)', message: `not valid YAML: ${(e as Error).message.split('\n')[0]}` }]);
  }
  const early: ConfigIssue[] = [];
  interpolationIssues(value, [], early);
  if (early.length) throw new ConfigError(file, early);

  const result = withBaseDir(baseDir, () => schema.safeParse(value, { reportInput: true }));
  if (!result.success) throw new ConfigError(file, toIssues(result.error.issues));
  return result.data;
}

/** `0644`: the permission bits of a mode, as chmod writes them. */
export function formatMode(mode: number): string {
  return '0' + (mode & 0o7777).toString(8).padStart(3, '0');
}

/**
 * Why a configuration file may not be trusted, or undefined when it may: it
 * decides which CA, HSM and policies the process uses, so nobody but its
 * owner (this process's user, or root) may be able to change it.
 */
export function configFileRefusal(st: Pick<Stats, 'mode' | 'uid'>, uid: number | undefined = process.getuid?.()): string | undefined {
  if (!((st.mode & 0o170000) === 0o100000)) return 'not a regular file';
  if (st.mode & 0o022) {
    const who = st.mode & 0o002 ? 'world-writable' : 'group-writable';
    return `${who} (mode ${formatMode(st.mode)}): anyone who can change it decides the CA, HSM and policies; chmod go-w it`;
  }
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
    return `owned by uid ${st.uid}, neither this process's user (uid ${uid}) nor root: chown it to one of them`;
  }
  return undefined;
}

/**
 * Reads and validates one configuration file. Throws ConfigError, and only
 * ConfigError. A file that others could have changed (group- or
 * world-writable, or owned by another non-root user) is refused.
 */
export function loadConfig<S extends z.ZodType>(path: string, schema: S): z.output<S> {
  const file = resolve(path);
  let text: string;
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    // The checks are made on the open file, so a swap after them changes nothing.
    const st = fstatSync(fd);
    const refusal = configFileRefusal(st);
    if (refusal !== undefined) throw new ConfigError(file, [{ path: '(file)', message: `refused: ${refusal}` }]);
    if (st.size > MAX_CONFIG_BYTES) throw new Error(`larger than ${MAX_CONFIG_BYTES} bytes`);
    text = readFileSync(fd, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(file, [{ path: '(file)', message: `cannot read: ${(e as Error).message}` }]);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return parseConfigText(text, schema, { file, baseDir: dirname(file) });
}
