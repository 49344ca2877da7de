/**
 * Reading firmware-policy files. Everything that can go wrong (I/O, YAML
 * syntax, alias bombs, oversized files, schema) is a PolicyError and nothing else.
 */
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { PolicyError } from './errors.js';
import { validatePolicyDocument, type FirmwarePolicy } from './schema.js';

/** Policies are small; a bigger file is a mistake or an attack on the parser. */
export const MAX_POLICY_BYTES = 1 << 20;

/** Parses one policy from YAML (or JSON) text. `origin` names the source in errors. */
export function parsePolicy(text: string, origin = '(text)'): FirmwarePolicy {
  if (typeof text !== 'string') throw new PolicyError(origin, [{ path: '(file)', message: 'policy text is not a string' }]);
  if (text.length > MAX_POLICY_BYTES) throw new PolicyError(origin, [{ path: '(file)', message: `larger than ${MAX_POLICY_BYTES} bytes` }]);
  let value: unknown;
  try {
    const doc = parseDocument(text, { schema: 'core', uniqueKeys: true, merge: false, prettyErrors: true });
    if (doc.errors.length) {
      throw new PolicyError(
        origin,
        doc.errors.map((e) => ({
          path: '(file)',
          message: `YAML${e.linePos?.[0] ? ` line ${e.linePos[0].line} column ${e.linePos[0].col}` : ''}: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}`,
        })),
      );
    }
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    if (e instanceof PolicyError) throw e;
    throw new PolicyError(origin, [{ path: '(file)', message: `not valid YAML: ${(e as Error).message.split('\n')[0]}` }]);
  }
  return validate(value, origin);
}

/** Validates an already-parsed document (e.g. from JSON or a generator). */
export function validate(value: unknown, origin = '(object)'): FirmwarePolicy {
  const r = validatePolicyDocument(value);
  if (!r.ok) throw new PolicyError(origin, r.issues);
  return r.policy;
}

/** A path to a policy file, or `{ text }` with the policy itself. */
export type PolicySource = string | { readonly text: string; readonly origin?: string };

export function loadPolicy(source: PolicySource): FirmwarePolicy {
  if (typeof source !== 'string') return parsePolicy(source.text, source.origin);
  const file = resolve(source);
  let text: string;
  try {
    if (statSync(file).size > MAX_POLICY_BYTES) throw new Error(`larger than ${MAX_POLICY_BYTES} bytes`);
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new PolicyError(file, [{ path: '(file)', message: `cannot read: ${(e as Error).message}` }]);
  }
  return parsePolicy(text, file);
}

/** Loads several policies; two with the same name are refused (the name is the node's selector). */
export function loadPolicies(sources: readonly PolicySource[]): FirmwarePolicy[] {
  const byName = new Map<string, string>();
  return sources.map((s) => {
    const p = loadPolicy(s);
    const origin = typeof s === 'string' ? resolve(s) : (s.origin ?? '(text)');
    const first = byName.get(p.name);
    if (first !== undefined) {
      throw new PolicyError(origin, [{ path: 'name', message: `"${p.name}" is already the name of the policy in ${first}` }]);
    }
    byName.set(p.name, origin);
    return p;
  });
}
