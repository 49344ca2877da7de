/**
 * The admin API under /v1: registration entries, attested agents, bundles.
 * Every route runs behind an authenticator (admin socket or mTLS) that names
 * the actor; every change is one `admin.change` audit line with that actor.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import type { TrustDomain } from '../../spiffe/id.js';
import { bundleFromJwks, bundleToJwksJson } from '../../spiffe/bundle.js';
import type { AuditLog } from '../../log/index.js';
import type { BatchResult, Datastore, RegistrationEntry } from '../store/index.js';
import type { Authenticate } from './admin-auth.js';
import type { BundleProvider } from './bundle-provider.js';
import { batchItemError, ProblemError } from './problem.js';
import {
  agentListQuery,
  agentToJson,
  banBody,
  entryListQuery,
  entrySchemas,
  entryToJson,
  parseInput,
  spiffeIdIn,
  toEntryChanges,
  toEntryInput,
  trustDomainName,
} from './wire.js';

export interface AdminRouteDeps {
  readonly store: Datastore;
  readonly bundles: BundleProvider;
  readonly trustDomain: TrustDomain;
  readonly audit: AuditLog;
  readonly authenticate: Authenticate;
  /** The raw JSON text of a request body (bundles are parsed from text to catch duplicate members). */
  readonly rawBody: (req: FastifyRequest) => string | undefined;
}

const JSON_TYPE = 'application/json; charset=utf-8';

function batchJson(r: BatchResult<RegistrationEntry>) {
  return r.results.map((item) =>
    item.status === 'done'
      ? { status: 'done' as const, entry: entryToJson(item.value) }
      : item.status === 'failed'
        ? { status: 'failed' as const, error: batchItemError(item.error) }
        : { status: 'rolled-back' as const },
  );
}

/** A refused batch: 409 when every failure is a conflict, 400 otherwise; the per-item results ride along. */
function batchProblem(r: BatchResult<RegistrationEntry>, what: string): ProblemError {
  const failures = r.results.flatMap((x) => (x.status === 'failed' ? [batchItemError(x.error)] : []));
  const status = failures.length > 0 && failures.every((f) => f.status === 409) ? 409 : failures.every((f) => f.status === 404) ? 404 : 400;
  const slug = status === 409 ? 'conflict' : status === 404 ? 'not-found' : 'validation';
  const errors = r.results.flatMap((x, i) =>
    x.status === 'failed' ? (batchItemError(x.error).errors ?? [{ path: '', message: x.error.message }]).map((e) => ({ path: `/${i}${e.path}`, message: e.message })) : [],
  );
  return new ProblemError(status, slug, `${what}: nothing was written, ${failures.length} of ${r.results.length} items failed`, { errors, results: batchJson(r) });
}

export function registerAdminRoutes(app: FastifyInstance, deps: AdminRouteDeps): void {
  const { store, trustDomain: td, audit } = deps;
  const schemas = entrySchemas(td);
  const listQuery = entryListQuery(td);
  const agentIdParam = z.strictObject({ agentId: spiffeIdIn(td) });
  const entryIdParam = z.strictObject({ id: z.string().min(1).max(64) });
  const tdParam = z.strictObject({ trustDomain: trustDomainName });
  const actors = new WeakMap<FastifyRequest, string>();
  const actorOf = (req: FastifyRequest): string => actors.get(req) ?? 'unknown';
  const record = (req: FastifyRequest, action: string, target: string, detail?: Record<string, unknown>) =>
    audit.record({ event: 'admin.change', actor: actorOf(req), action, target, ...(detail ? { detail } : {}) });

  app.addHook('onRequest', async (req) => {
    try {
      actors.set(req, await deps.authenticate(req.raw.socket));
    } catch (e) {
      // A refused admin caller is part of the audit trail too.
      if (e instanceof ProblemError && (e.status === 401 || e.status === 403)) {
        audit.record({ event: 'admin.refused', status: e.status, reason: e.detail, method: req.method, path: req.url.split('?')[0] ?? '', peer: req.socket.remoteAddress ?? 'local' });
      }
      throw e;
    }
  });

  const send = (reply: FastifyReply, status: number, body: unknown) => reply.code(status).type(JSON_TYPE).send(JSON.stringify(body));

  // ── entries ───────────────────────────────────────────────────────────────

  app.post('/entries', async (req, reply) => {
    const input = toEntryInput(parseInput(schemas.create, req.body));
    const entry = await store.createEntry(input);
    record(req, 'entry.create', entry.id, { spiffeId: entry.spiffeId.toString(), parentId: entry.parentId.toString() });
    return send(reply, 201, entryToJson(entry));
  });

  app.post('/entries/batch', async (req, reply) => {
    const body = parseInput(schemas.batchCreate, req.body);
    const r = await store.createEntries(body.entries.map(toEntryInput));
    if (!r.committed) throw batchProblem(r, 'batch create refused');
    for (const item of r.results) {
      if (item.status === 'done') record(req, 'entry.create', item.value.id, { spiffeId: item.value.spiffeId.toString(), parentId: item.value.parentId.toString(), batch: true });
    }
    return send(reply, 201, { results: batchJson(r) });
  });

  app.get('/entries', async (req, reply) => {
    const { filter, page } = parseInput(listQuery, req.query, 'query');
    const p = await store.listEntries(filter, page);
    return send(reply, 200, { entries: p.items.map(entryToJson), ...(p.nextCursor !== undefined ? { nextCursor: p.nextCursor } : {}) });
  });

  app.get('/entries/:id', async (req, reply) => {
    const { id } = parseInput(entryIdParam, req.params, 'path');
    const entry = await store.getEntry(id);
    if (!entry) throw new ProblemError(404, 'not-found', `entry ${JSON.stringify(id)} not found`);
    return send(reply, 200, entryToJson(entry));
  });

  app.patch('/entries/:id', async (req, reply) => {
    const { id } = parseInput(entryIdParam, req.params, 'path');
    const { changes, ifRevision } = toEntryChanges(parseInput(schemas.update, req.body));
    const entry = await store.updateEntry(id, changes, ifRevision !== undefined ? { ifRevision } : undefined);
    record(req, 'entry.update', entry.id, { fields: Object.keys(changes), revision: entry.revision });
    return send(reply, 200, entryToJson(entry));
  });

  app.delete('/entries/:id', async (req, reply) => {
    const { id } = parseInput(entryIdParam, req.params, 'path');
    const entry = await store.deleteEntry(id);
    record(req, 'entry.delete', entry.id, { spiffeId: entry.spiffeId.toString() });
    return send(reply, 200, entryToJson(entry));
  });

  app.post('/entries/batch-delete', async (req, reply) => {
    const { ids } = parseInput(schemas.batchDelete, req.body);
    const r = await store.deleteEntries(ids);
    if (!r.committed) throw batchProblem(r, 'batch delete refused');
    for (const item of r.results) if (item.status === 'done') record(req, 'entry.delete', item.value.id, { spiffeId: item.value.spiffeId.toString(), batch: true });
    return send(reply, 200, { results: batchJson(r) });
  });

  // ── agents ────────────────────────────────────────────────────────────────

  app.get('/agents', async (req, reply) => {
    const { filter, page } = parseInput(agentListQuery, req.query, 'query');
    const p = await store.listNodes(filter, page);
    return send(reply, 200, { agents: p.items.map(agentToJson), ...(p.nextCursor !== undefined ? { nextCursor: p.nextCursor } : {}) });
  });

  app.get('/agents/:agentId', async (req, reply) => {
    const { agentId } = parseInput(agentIdParam, req.params, 'path');
    const node = await store.getNode(agentId);
    if (!node) throw new ProblemError(404, 'not-found', `agent ${agentId.toString()} not found`);
    return send(reply, 200, agentToJson(node));
  });

  app.post('/agents/:agentId/evict', async (req, reply) => {
    const { agentId } = parseInput(agentIdParam, req.params, 'path');
    const node = await store.evictNode(agentId);
    record(req, 'agent.evict', agentId.toString());
    return send(reply, 200, agentToJson(node));
  });

  app.post('/agents/:agentId/ban', async (req, reply) => {
    const { agentId } = parseInput(agentIdParam, req.params, 'path');
    const { reason } = parseInput(banBody, req.body);
    const node = await store.banNode(agentId, reason);
    record(req, 'agent.ban', agentId.toString(), { reason });
    return send(reply, 200, agentToJson(node));
  });

  app.post('/agents/:agentId/unban', async (req, reply) => {
    const { agentId } = parseInput(agentIdParam, req.params, 'path');
    const node = await store.unbanNode(agentId);
    record(req, 'agent.unban', agentId.toString());
    return send(reply, 200, agentToJson(node));
  });

  // ── bundles ───────────────────────────────────────────────────────────────

  app.get('/bundle', async (_req, reply) => reply.code(200).type(JSON_TYPE).send(bundleToJwksJson(deps.bundles.bundle())));

  app.get('/bundles/federated', async (_req, reply) => {
    const list = await store.listFederatedBundles();
    return send(reply, 200, {
      bundles: list.map((b) => ({
        trustDomain: b.trustDomain.name,
        ...(b.refreshHint !== undefined ? { refreshHint: b.refreshHint } : {}),
        updatedAt: b.updatedAt.toISOString(),
        bundle: JSON.parse(b.jwks) as unknown,
      })),
    });
  });

  app.get('/bundles/federated/:trustDomain', async (req, reply) => {
    const { trustDomain } = parseInput(tdParam, req.params, 'path');
    const b = await store.getFederatedBundle(trustDomain);
    if (!b) throw new ProblemError(404, 'not-found', `no federated bundle for ${trustDomain.name}`);
    return reply.code(200).type(JSON_TYPE).send(b.jwks);
  });

  app.put('/bundles/federated/:trustDomain', { bodyLimit: 4 * 1024 * 1024 }, async (req, reply) => {
    const { trustDomain } = parseInput(tdParam, req.params, 'path');
    if (trustDomain.equals(td)) throw new ProblemError(400, 'validation', `${td.name} is this server's own trust domain; its bundle comes from the CA`, { errors: [{ path: ':trustDomain', message: 'own trust domain' }] });
    const text = deps.rawBody(req);
    if (text === undefined) throw new ProblemError(415, 'unsupported-media-type', 'send the SPIFFE bundle as application/json');
    // Parsed from the text so duplicate members are refused; stored in canonical form.
    const bundle = bundleFromJwks(trustDomain, text);
    const stored = await store.setFederatedBundle(trustDomain, bundleToJwksJson(bundle), bundle.refreshHint);
    record(req, 'bundle.set_federated', trustDomain.name, { x509Authorities: bundle.x509Authorities.length, jwtAuthorities: bundle.jwtKeyIds.length });
    return send(reply, 200, { trustDomain: stored.trustDomain.name, updatedAt: stored.updatedAt.toISOString(), bundle: JSON.parse(stored.jwks) as unknown });
  });

  app.delete('/bundles/federated/:trustDomain', async (req, reply) => {
    const { trustDomain } = parseInput(tdParam, req.params, 'path');
    await store.deleteFederatedBundle(trustDomain);
    record(req, 'bundle.delete_federated', trustDomain.name);
    return reply.code(204).send();
  });
}
