/**
 * The Workload API's audit events as lines of the agent's audit log
 * (src/log/audit.ts): `workload.issued` / `workload.refused`, with who asked
 * (pid, uid, gid, selectors), what (rpc, SPIFFE IDs) and why (code, reason),
 * the same `audit: true` trail the server writes for `svid.refused`.
 */
import type { AuditEvent } from '../../log/audit.js';
import type { WorkloadAuditEvent } from './server.js';

export function workloadAuditEvent(e: WorkloadAuditEvent): AuditEvent {
  const who = {
    ...(e.pid !== undefined ? { pid: e.pid } : {}),
    ...(e.uid !== undefined ? { uid: e.uid } : {}),
    ...(e.gid !== undefined ? { gid: e.gid } : {}),
  };
  if (e.outcome === 'issued') return { event: 'workload.issued', rpc: e.rpc, spiffeIds: [...(e.spiffeIds ?? [])], ...who };
  return {
    event: 'workload.refused',
    rpc: e.rpc,
    code: e.code ?? 'UNKNOWN',
    reason: e.reason ?? '',
    ...who,
    ...(e.selectors ? { selectors: [...e.selectors] } : {}),
  };
}
