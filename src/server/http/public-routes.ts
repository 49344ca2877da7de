/**
 * What anyone may read: liveness and readiness, Prometheus metrics, the SPIFFE
 * bundle endpoint (https_web profile) and OIDC discovery for JWT-SVIDs.
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { bundleToJwksJson } from '../../spiffe/bundle.js';
import type { Datastore } from '../store/index.js';
import type { BundleProvider } from './bundle-provider.js';
import type { MetricsRegistry } from './metrics.js';
import { PROMETHEUS_CONTENT_TYPE } from './metrics.js';
import { discoveryDocument, oidcJwks } from './oidc.js';
import { PROBLEM_CONTENT_TYPE, ProblemError } from './problem.js';

const JSON_TYPE = 'application/json; charset=utf-8';

export interface HealthDeps {
  readonly store: Datastore;
  readonly bundles: BundleProvider;
  /** True when the CA has an active signing key; default: the bundle has an authority. */
  readonly caReady?: () => boolean | Promise<boolean>;
  /** True when the HSM can sign with the CA's active keys (logged in, token there); absent: not checked. */
  readonly hsmReady?: () => boolean | Promise<boolean>;
}

async function check(fn: () => unknown): Promise<'ok' | 'failing'> {
  try {
    return (await fn()) === false ? 'failing' : 'ok';
  } catch {
    return 'failing';
  }
}

export function registerHealthRoutes(app: FastifyInstance, deps: HealthDeps): void {
  app.get('/live', async (_req, reply) => reply.type(JSON_TYPE).send(JSON.stringify({ status: 'live' })));
  app.get('/ready', async (_req, reply) => {
    const checks = {
      store: await check(() => deps.store.currentRevision()),
      ca: await check(() => (deps.caReady ? deps.caReady() : !deps.bundles.bundle().isEmpty)),
      ...(deps.hsmReady ? { hsm: await check(deps.hsmReady) } : {}),
    };
    if (Object.values(checks).some((v) => v !== 'ok')) {
      const failing = Object.entries(checks).flatMap(([k, v]) => (v === 'ok' ? [] : [k]));
      throw new ProblemError(503, 'not-ready', `not ready: ${failing.join(', ')} failing`, { checks });
    }
    return reply.type(JSON_TYPE).send(JSON.stringify({ status: 'ready', checks }));
  });
}

export function registerMetricsRoute(app: FastifyInstance, registry: MetricsRegistry): void {
  app.get('/metrics', async (_req, reply) => reply.type(PROMETHEUS_CONTENT_TYPE).send(await registry.render()));
}

export interface FederationDeps {
  readonly bundles: BundleProvider;
  /** Path of the bundle endpoint (default `/bundle`). */
  readonly bundlePath: string;
  /** spiffe_refresh_hint, seconds; also the max-age of the bundle, discovery and JWKS responses. */
  readonly refreshHintSeconds: number;
  /**
   * Who may be named as issuer in OIDC discovery (see oidcIssuerResolver); absent:
   * discovery is not served. Never derived from the request.
   */
  readonly oidcIssuer?: (host: string | undefined) => string | undefined;
}

/** A strong validator of the body: relying parties revalidate with If-None-Match and get 304. */
function etagOf(body: string): string {
  return `"${createHash('sha256').update(body).digest('base64url').slice(0, 32)}"`;
}

function matches(ifNoneMatch: string | string[] | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false;
  const list = (Array.isArray(ifNoneMatch) ? ifNoneMatch.join(',') : ifNoneMatch).split(',').map((t) => t.trim().replace(/^W\//, ''));
  return list.includes('*') || list.includes(etag);
}

/** Sends a public document with Cache-Control tied to the refresh hint and an ETag. */
function sendCacheable(req: FastifyRequest, reply: FastifyReply, type: string, body: string, maxAgeSeconds: number): FastifyReply {
  const etag = etagOf(body);
  reply.header('cache-control', `public, max-age=${maxAgeSeconds}`).header('etag', etag).header('vary', 'Host');
  if (matches(req.headers['if-none-match'], etag)) return reply.code(304).send();
  return reply.type(type).send(body);
}

function sendUncacheableProblem(reply: FastifyReply, p: ProblemError): FastifyReply {
  return reply.code(p.status).header('cache-control', 'no-store').type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(p.body()));
}

export function registerFederationRoutes(app: FastifyInstance, deps: FederationDeps): void {
  const maxAge = deps.refreshHintSeconds;
  app.get(deps.bundlePath, async (req, reply) => {
    const bundle = deps.bundles.bundle().with({ refreshHint: deps.refreshHintSeconds });
    return sendCacheable(req, reply, 'application/json', bundleToJwksJson(bundle), maxAge);
  });
  app.get('/.well-known/openid-configuration', async (req, reply) => {
    if (!deps.oidcIssuer) {
      return sendUncacheableProblem(
        reply,
        new ProblemError(404, 'not-found', 'OIDC discovery is not configured: set server.jwt.issuer (the iss of JWT-SVIDs) or server.jwt.oidc_domains (the host names discovery answers for)'),
      );
    }
    // The Host header only selects among configured names; nothing of it is echoed.
    const issuer = deps.oidcIssuer(req.headers.host);
    if (issuer === undefined) {
      return sendUncacheableProblem(reply, new ProblemError(404, 'not-found', 'OIDC discovery is not served for this host name; see server.jwt.oidc_domains'));
    }
    return sendCacheable(req, reply, JSON_TYPE, JSON.stringify(discoveryDocument(issuer, deps.bundles.bundle())), maxAge);
  });
  app.get('/keys', async (req, reply) => sendCacheable(req, reply, JSON_TYPE, JSON.stringify(oidcJwks(deps.bundles.bundle())), maxAge));
}
