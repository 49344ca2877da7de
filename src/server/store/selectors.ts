/**
 * Selectors as SPIRE writes them: `type:value`, split at the first colon
 * (`unix:uid:1000` is type `unix`, value `uid:1000`). A selector set is kept
 * sorted and without duplicates, so that equal sets have equal canonical keys.
 */
import { InvalidRecordError } from './errors.js';

export interface Selector {
  readonly type: string;
  readonly value: string;
}

const TYPE_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
const MAX_VALUE_LENGTH = 1024;

function valueProblem(value: string): string | undefined {
  if (value.length === 0) return 'value is empty';
  if (value.length > MAX_VALUE_LENGTH) return `value is longer than ${MAX_VALUE_LENGTH} characters`;
  // Control characters have no place in a selector and would make logs ambiguous.
  if (/[\u0000-\u001f\u007f]/.test(value)) return 'value has a control character';
  return undefined;
}

export function selectorProblem(s: Selector): string | undefined {
  if (typeof s?.type !== 'string' || !TYPE_RE.test(s.type)) {
    return `type ${JSON.stringify(s?.type)} must be 1-64 of a-z 0-9 _ - (starting with a letter or digit)`;
  }
  if (typeof s.value !== 'string') return 'value is not a string';
  return valueProblem(s.value);
}

/** Parses `type:value`; throws InvalidRecordError naming the problem. */
export function parseSelector(text: string): Selector {
  const colon = text.indexOf(':');
  if (colon <= 0) throw new InvalidRecordError('selector', `${JSON.stringify(text)} is not of the form type:value`);
  const s = { type: text.slice(0, colon), value: text.slice(colon + 1) };
  const problem = selectorProblem(s);
  if (problem) throw new InvalidRecordError('selector', `${JSON.stringify(text)}: ${problem}`);
  return s;
}

export function formatSelector(s: Selector): string {
  return `${s.type}:${s.value}`;
}

/** Validates, sorts and de-duplicates a selector set; `field` names it in errors. */
export function normalizeSelectors(selectors: readonly Selector[], field = 'selectors'): Selector[] {
  if (!Array.isArray(selectors)) throw new InvalidRecordError(field, 'not a list');
  const byText = new Map<string, Selector>();
  for (const s of selectors) {
    const problem = selectorProblem(s);
    if (problem) throw new InvalidRecordError(field, problem);
    byText.set(formatSelector(s), Object.freeze({ type: s.type, value: s.value }));
  }
  return [...byText.keys()].sort().map((k) => byText.get(k)!);
}

/** The canonical text of a normalized selector set: a JSON list of sorted `type:value` strings. */
export function selectorSetKey(normalized: readonly Selector[]): string {
  return JSON.stringify(normalized.map(formatSelector));
}
