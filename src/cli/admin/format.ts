/** Human output in the layout SPIRE users know: `Label : value` blocks, one per record. */
import type { AgentJson, EntryJson } from '../../server/http/wire.js';

const WIDTH = 17;
const line = (label: string, value: string | number): string => `${label.padEnd(WIDTH)}: ${value}`;

function ttl(v: number | undefined): string {
  return v === undefined ? 'default' : String(v);
}

export function formatEntry(e: EntryJson): string {
  const out = [
    line('Entry ID', e.id),
    line('SPIFFE ID', e.spiffeId),
    line('Parent ID', e.parentId),
    line('Revision', e.revision),
  ];
  if (e.downstream) out.push(line('Downstream', 'true'));
  out.push(line('X509-SVID TTL', ttl(e.x509SvidTtl)), line('JWT-SVID TTL', ttl(e.jwtSvidTtl)));
  if (e.expiresAt) out.push(line('Expiration time', e.expiresAt));
  for (const s of e.selectors) out.push(line('Selector', s));
  for (const f of e.federatesWith) out.push(line('FederatesWith', f));
  for (const d of e.dnsNames) out.push(line('DNS name', d));
  if (e.admin) out.push(line('Admin', 'true'));
  if (e.hint) out.push(line('Hint', e.hint));
  return out.join('\n') + '\n';
}

export function formatEntries(entries: readonly EntryJson[]): string {
  const head = `Found ${entries.length} ${entries.length === 1 ? 'entry' : 'entries'}\n`;
  return head + entries.map(formatEntry).join('\n');
}

export function formatAgent(a: AgentJson): string {
  const out = [line('SPIFFE ID', a.agentId), line('Attestation type', a.attestationType), line('EK hash', a.ekPublicHash)];
  const s = a.status;
  if (s.kind === 'active') {
    out.push(line('Status', 'active'), line('Expiration time', s.svid.notAfter), line('Serial number', s.svid.serial), line('Can re-attest', 'true'));
  } else if (s.kind === 'evicted') {
    out.push(line('Status', `evicted since ${s.since}`), line('Can re-attest', 'true'));
  } else if (s.kind === 'drifted') {
    out.push(line('Status', `drifted since ${s.since}`), line('Drift reason', s.reason), line('Can re-attest', 'true'));
  } else {
    out.push(line('Status', `banned since ${s.since}`), line('Ban reason', s.reason), line('Can re-attest', 'false'));
  }
  for (const sel of a.selectors) out.push(line('Selector', sel));
  out.push(line('Last seen', a.lastSeen));
  return out.join('\n') + '\n';
}

export function formatAgents(agents: readonly AgentJson[]): string {
  const head = `Found ${agents.length} attested ${agents.length === 1 ? 'agent' : 'agents'}:\n\n`;
  return head + agents.map(formatAgent).join('\n');
}
