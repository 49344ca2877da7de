/**
 * The audit trail: every identity issued or refused and every admin change is
 * one structured line with `audit: true`, who, what and why. It goes through
 * the same logger so it lands wherever the operator collects logs.
 */
import type { Logger } from './logger.js';

export type AuditEvent =
  | { event: 'node.attested'; agentId: string; ekHash: string; selectors: string[]; serial: string; notAfter: string; peer?: string }
  | { event: 'node.attestation_refused'; reason: string; detail: string; ekHash?: string; peer?: string }
  | { event: 'node.renewed'; agentId: string; serial: string; notAfter: string }
  | { event: 'node.renewal_refused'; agentId: string; reason: string; detail: string }
  | { event: 'node.checked'; agentId: string; selectors: string[] }
  | { event: 'node.check_refused'; agentId: string; reason: string; detail: string }
  | { event: 'node.drifted'; agentId: string; reason: string; detail: string }
  | { event: 'node.connection_refused'; agentId: string; reason: string; detail: string; peer: string }
  | { event: 'node.connection_closed'; agentId: string; reason: string; peer: string }
  | { event: 'svid.x509_issued'; spiffeId: string; entryId: string; agentId: string; serial: string; notAfter: string; keyId?: string }
  | { event: 'svid.jwt_issued'; spiffeId: string; entryId: string; agentId: string; audience: string[]; notAfter: string; keyId?: string }
  | { event: 'svid.wit_issued'; spiffeId: string; entryId: string; agentId: string; jti: string; cnfThumbprint: string; notAfter: string; keyId?: string }
  | { event: 'svid.refused'; agentId: string; entryId: string; reason: string; svid?: 'wit' }
  | { event: 'workload.issued'; rpc: string; spiffeIds: string[]; pid?: number; uid?: number; gid?: number }
  | { event: 'workload.refused'; rpc: string; code: string; reason: string; pid?: number; uid?: number; gid?: number; selectors?: string[] }
  | { event: 'admin.change'; actor: string; action: string; target: string; detail?: Record<string, unknown> }
  | { event: 'admin.refused'; status: 401 | 403; reason: string; method: string; path: string; peer: string }
  | { event: 'ca.key_rotated'; kind: 'x509' | 'jwt'; keyId: string; state: string };

export interface AuditLog {
  record(e: AuditEvent): void;
}

export function auditLog(logger: Logger): AuditLog {
  return {
    record(e) {
      const { event, ...rest } = e;
      const refused = event.endsWith('refused');
      (refused ? logger.warn : logger.info)(event, { audit: true, event, ...rest });
    },
  };
}

/** Collects audit events in memory (tests). */
export function memoryAuditLog(): AuditLog & { events: AuditEvent[] } {
  const events: AuditEvent[] = [];
  return { events, record: (e) => void events.push(e) };
}
