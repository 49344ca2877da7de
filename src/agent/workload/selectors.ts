/**
 * Workload selectors as SPIRE writes them: `type:value`, the value itself
 * `kind:data` (`unix:uid:1000` is type `unix`, value `uid:1000`). The shape
 * matches the server's registration-entry selectors, which the agent may not
 * import.
 */
export interface Selector {
  readonly type: string;
  readonly value: string;
}

export const formatSelector = (s: Selector): string => `${s.type}:${s.value}`;

/** `unix:sha256`, `container:id`: the type and the first part of the value, what entries are filtered by to decide what to gather. */
export type SelectorKind = `${string}:${string}`;

export function kindOf(s: Selector): SelectorKind {
  const colon = s.value.indexOf(':');
  return `${s.type}:${colon < 0 ? s.value : s.value.slice(0, colon)}`;
}

/** Sorted, without duplicates: equal sets get equal keys (used to share work between streams). */
export function selectorSetKey(selectors: readonly Selector[]): string {
  return JSON.stringify([...new Set(selectors.map(formatSelector))].sort());
}
