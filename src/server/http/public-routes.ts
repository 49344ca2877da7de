/**
 * What anyone may read: liveness and readiness, Prometheus metrics, the SPIFFE
 * bundle endpoint (https_web profile) and OIDC discovery for JWT-SVIDs.
 */
import type { FastifyInstance } from 'fastify';
import { bundleToJwksJson } from '../../spiffe/bundle.js';
import type { Datastore } from '../store/index.js';
import type { BundleProvider } from './bundle-provider.js';
import type { MetricsRegistry } from './metrics.js';
import { PROMETHEUS_CONTENT_TYPE } from './metrics.js';
import { discoveryDocument, oidcJwks } from './oidc.js';
import { ProblemError } from './problem.js';

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
  /** spiffe_refresh_hint, seconds. */
  readonly refreshHintSeconds: number;
  /** The `iss` of JWT-SVIDs, an https URL; without it the issuer is the URL the client used. */
  readonly jwtIssuer?: string;
}

export function registerFederationRoutes(app: FastifyInstance, deps: FederationDeps): void {
  app.get(deps.bundlePath, async (_req, reply) => {
    const bundle = deps.bundles.bundle().with({ refreshHint: deps.refreshHintSeconds });
    return reply.type('application/json').send(bundleToJwksJson(bundle));
  });
  app.get('/.well-known/openid-configuration', async (req, reply) => {
    const issuer = deps.jwtIssuer ?? `${req.protocol}://${req.host}`;
    return reply.type(JSON_TYPE).send(JSON.stringify(discoveryDocument(issuer, deps.bundles.bundle())));
  });
  app.get('/keys', async (_req, reply) => reply.type(JSON_TYPE).send(JSON.stringify(oidcJwks(deps.bundles.bundle()))));
}
