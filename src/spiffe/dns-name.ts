/**
 * DNS names an X.509-SVID may carry besides its SPIFFE ID: lowercase LDH
 * labels (RFC 1123), at most 253 characters, and at most one leading wildcard
 * label over at least two more labels (`*.example.org`, never `*.org`).
 * Entries and the CA apply the same rule, so an entry can never hold a name
 * the CA would refuse.
 */
const DNS_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;

/** Why `name` is not a DNS name an SVID may carry, or undefined when it is. */
export function dnsNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return 'not a string';
  if (name.length === 0) return 'empty';
  if (name.length > 253) return 'longer than 253 characters';
  const labels = name.split('.');
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i]!;
    if (i === 0 && label === '*') {
      if (labels.length > 2) continue;
      return 'a wildcard needs at least two labels under it';
    }
    if (!DNS_LABEL.test(label)) return `label ${JSON.stringify(label)} is not a lowercase DNS label`;
  }
  return undefined;
}
