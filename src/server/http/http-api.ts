/**
 * keel server's HTTP API: two fastify instances.
 * - public (TCP, TLS with a web-PKI certificate, or plain HTTP when the
 *   operator says so): health, metrics, the SPIFFE bundle endpoint, OIDC
 *   discovery, and the admin API for clients with an admin X.509-SVID (mTLS);
 * - admin (the local Unix socket, 0600): health, metrics and the admin API.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { TrustDomain, SpiffeId } from '../../spiffe/id.js';
import type { AuditLog, Logger } from '../../log/index.js';
import type { Datastore, NodeStatus } from '../store/index.js';
import { localAuthenticator, svidAuthenticator, type Authenticate } from './admin-auth.js';
import { registerAdminRoutes } from './admin-routes.js';
import { prepareAdminSocket, restrictAdminSocket } from './admin-socket.js';
import type { BundleProvider, CaKeyStatus } from './bundle-provider.js';
import { createKeelMetrics, type KeelMetrics } from './metrics.js';
import { OidcConfigError, oidcIssuerResolver } from './oidc.js';
import { PROBLEM_CONTENT_TYPE, ProblemError, problemFromError, problemFromFastifyError } from './problem.js';
import { registerFederationRoutes, registerHealthRoutes, registerMetricsRoute } from './public-routes.js';

export interface HttpApiOptions {
  readonly store: Datastore;
  readonly bundles: BundleProvider;
  readonly trustDomain: TrustDomain;
  readonly audit: AuditLog;
  readonly logger: Logger;
  /** Shared with the Node API, which counts attestations and SVIDs; created when absent. */
  readonly metrics?: KeelMetrics;
  /** `iss` of JWT-SVIDs (server.jwt.issuer), an https URL: OIDC discovery names it. */
  readonly jwtIssuer?: string;
  /**
   * Host names OIDC discovery answers for (server.jwt.oidc_domains): a request whose
   * Host is on the list gets `https://<name>` as issuer (or jwtIssuer when set), any
   * other a 404. With neither this nor jwtIssuer, discovery is not served.
   */
  readonly oidcDomains?: readonly string[];
  /** Path of the SPIFFE bundle endpoint; default `/bundle`. */
  readonly bundlePath?: string;
  /** spiffe_refresh_hint of the bundle endpoint, seconds; default 300. */
  readonly bundleRefreshHintSeconds?: number;
  /** SPIFFE IDs allowed to administer over mTLS besides entries with `admin: true`. */
  readonly adminIds?: readonly (SpiffeId | string)[];
  /** Readiness of the CA (an active signing key); default: the bundle has an authority. */
  readonly caReady?: () => boolean | Promise<boolean>;
  /** Whether the HSM can sign with the CA's keys now; /ready reports it as `hsm`. */
  readonly hsmReady?: () => boolean | Promise<boolean>;
  /** CA keys for the expiry gauge (CertificateAuthority.status fits). */
  readonly caStatus?: () => readonly CaKeyStatus[];
  /** TLS of the public listener (PEM); absent = plain HTTP. */
  readonly publicTls?: { readonly cert: string | Buffer; readonly key: string | Buffer };
  readonly now?: () => Date;
}

export interface HttpApi {
  readonly public: FastifyInstance;
  readonly admin: FastifyInstance;
  readonly metrics: KeelMetrics;
  /** Closes both instances and detaches from the store. */
  close(): Promise<void>;
}

export class HttpApiConfigError extends Error {
  override name = 'HttpApiConfigError';
}

/** Entry and agent gauges are recounted after a store change, and at least this often (other servers write too). */
const RECOUNT_MS = 60_000;

function newInstance(tls: HttpApiOptions['publicTls']): FastifyInstance {
  const base = { logger: false, bodyLimit: 1024 * 1024, forceCloseConnections: true, return503OnClosing: true } as const;
  if (!tls) return Fastify(base);
  // The client certificate is requested but not checked by TLS: the admin hook checks it as an
  // X.509-SVID against the CA's current bundle, and public routes need none.
  const https = { cert: tls.cert, key: tls.key, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' as const };
  return Fastify({ ...base, https }) as unknown as FastifyInstance;
}

function sendProblem(reply: FastifyReply, p: ProblemError): FastifyReply {
  return reply.code(p.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(p.body()));
}

/** Error handling, raw JSON bodies, request metrics: the same on both instances. */
function prepareInstance(app: FastifyInstance, o: HttpApiOptions, metrics: KeelMetrics, rawBodies: WeakMap<FastifyRequest, string>): void {
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    rawBodies.set(req, body as string);
    parseJson(req, body as string, done);
  });
  app.setErrorHandler((err: FastifyError, req, reply) => {
    let p = problemFromError(err) ?? problemFromFastifyError(err);
    if (!p) {
      o.logger.error('HTTP API request failed', { err, method: req.method, route: req.routeOptions.url });
      p = new ProblemError(500, 'internal', 'internal error; see the server log');
    }
    return sendProblem(reply, p);
  });
  app.setNotFoundHandler((req, reply) => sendProblem(reply, new ProblemError(404, 'not-found', `no route for ${req.method} ${req.url.split('?')[0]}`)));
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? '<unmatched>';
    metrics.httpRequests.inc({ route, method: req.method, status: String(reply.statusCode) });
    metrics.httpDuration.observe({ route }, reply.elapsedTime / 1000);
  });
}

async function countAll(list: (cursor?: string) => Promise<{ items: readonly unknown[]; nextCursor: string | undefined }>): Promise<number> {
  let n = 0;
  let cursor: string | undefined;
  do {
    const page = await list(cursor);
    n += page.items.length;
    cursor = page.nextCursor;
  } while (cursor !== undefined);
  return n;
}

function installCollectors(o: HttpApiOptions, metrics: KeelMetrics): () => void {
  const now = o.now ?? (() => new Date());
  let countedAt = -Infinity;
  let dirty = true;
  let refreshing: Promise<void> | undefined;
  const unsubscribe = o.store.subscribe((c) => {
    if (c.kind !== 'bundles') dirty = true;
  });
  const refresh = (): Promise<void> => {
    if (!dirty && Date.now() - countedAt < RECOUNT_MS) return Promise.resolve();
    refreshing ??= (async () => {
      dirty = false;
      try {
        metrics.entries.set(undefined, await countAll((cursor) => o.store.listEntries({}, { limit: 1000, ...(cursor ? { cursor } : {}) })));
        for (const status of ['active', 'evicted', 'banned', 'drifted'] as const satisfies readonly NodeStatus['kind'][]) {
          metrics.agents.set({ status }, await countAll((cursor) => o.store.listNodes({ status }, { limit: 1000, ...(cursor ? { cursor } : {}) })));
        }
        countedAt = Date.now();
      } catch (e) {
        dirty = true;
        o.logger.warn('counting entries and agents for metrics failed', { err: e });
      } finally {
        refreshing = undefined;
      }
    })();
    return refreshing;
  };
  metrics.entries.collect = refresh;
  metrics.agents.collect = refresh;
  if (o.caStatus) {
    const status = o.caStatus;
    metrics.caKeyExpiry.collect = () => {
      metrics.caKeyExpiry.reset();
      const t = now().getTime();
      for (const k of status()) metrics.caKeyExpiry.set({ kind: k.kind, key: k.label, state: k.state }, Math.round((k.notAfter.getTime() - t) / 1000));
    };
  }
  return unsubscribe;
}

/** Builds both instances with every route; nothing listens yet (see startHttpApi). */
export function createHttpApi(o: HttpApiOptions): HttpApi {
  const bundlePath = o.bundlePath ?? '/bundle';
  if (!/^\/[A-Za-z0-9._~\/-]*$/.test(bundlePath) || bundlePath.startsWith('/v1/') || ['/live', '/ready', '/metrics', '/keys'].includes(bundlePath)) {
    throw new HttpApiConfigError(`bundlePath ${JSON.stringify(bundlePath)} must be a plain absolute path not used by another route`);
  }
  const refreshHint = o.bundleRefreshHintSeconds ?? 300;
  if (!Number.isSafeInteger(refreshHint) || refreshHint < 1) throw new HttpApiConfigError('bundleRefreshHintSeconds must be a positive whole number');
  let oidcIssuer: ReturnType<typeof oidcIssuerResolver>;
  try {
    oidcIssuer = oidcIssuerResolver({ ...(o.jwtIssuer !== undefined ? { issuer: o.jwtIssuer } : {}), ...(o.oidcDomains ? { domains: o.oidcDomains } : {}) });
  } catch (e) {
    if (e instanceof OidcConfigError) throw new HttpApiConfigError(e.message);
    throw e;
  }
  const metrics = o.metrics ?? createKeelMetrics();
  const rawBodies = new WeakMap<FastifyRequest, string>();
  const pub = newInstance(o.publicTls);
  const admin = newInstance(undefined);
  prepareInstance(pub, o, metrics, rawBodies);
  prepareInstance(admin, o, metrics, rawBodies);

  const health = { store: o.store, bundles: o.bundles, ...(o.caReady ? { caReady: o.caReady } : {}), ...(o.hsmReady ? { hsmReady: o.hsmReady } : {}) };
  const adminDeps = (authenticate: Authenticate) => ({
    store: o.store,
    bundles: o.bundles,
    trustDomain: o.trustDomain,
    audit: o.audit,
    authenticate,
    rawBody: (req: FastifyRequest) => rawBodies.get(req),
  });

  registerHealthRoutes(pub, health);
  registerMetricsRoute(pub, metrics.registry);
  registerFederationRoutes(pub, { bundles: o.bundles, bundlePath, refreshHintSeconds: refreshHint, ...(oidcIssuer ? { oidcIssuer } : {}) });
  const svid = svidAuthenticator({ trustDomain: o.trustDomain, store: o.store, bundles: o.bundles, ...(o.adminIds ? { adminIds: o.adminIds } : {}), ...(o.now ? { now: o.now } : {}) });
  void pub.register(async (scope) => registerAdminRoutes(scope, adminDeps(svid)), { prefix: '/v1' });

  registerHealthRoutes(admin, health);
  registerMetricsRoute(admin, metrics.registry);
  const local = localAuthenticator(o.logger);
  void admin.register(async (scope) => registerAdminRoutes(scope, adminDeps(local)), { prefix: '/v1' });

  const unsubscribe = installCollectors(o, metrics);
  return {
    public: pub,
    admin,
    metrics,
    async close() {
      unsubscribe();
      await Promise.allSettled([pub.close(), admin.close()]);
    },
  };
}

export interface HttpListenOptions {
  /** The public listener (server.listen.http); absent = none. */
  readonly public?: {
    readonly host: string;
    /** 0 picks a free port (tests). */
    readonly port: number;
    readonly tls?: { readonly cert: string | Buffer; readonly key: string | Buffer };
    /** Plain HTTP without TLS: only when the operator says so (tests, behind a TLS proxy). */
    readonly allowPlaintext?: boolean;
  };
  /** Absolute path of the admin Unix socket (server.listen.admin_socket). */
  readonly adminSocket: string;
}

export interface HttpApiHandle {
  /** Where the public listener is bound, when there is one. */
  readonly publicAddress: { readonly host: string; readonly port: number } | undefined;
  readonly adminSocket: string;
  readonly api: HttpApi;
  close(): Promise<void>;
}

/** Creates the API and starts listening; on any failure nothing is left listening. */
export async function startHttpApi(o: Omit<HttpApiOptions, 'publicTls'> & { readonly listen: HttpListenOptions }): Promise<HttpApiHandle> {
  const pubListen = o.listen.public;
  if (pubListen && !pubListen.tls && pubListen.allowPlaintext !== true) {
    throw new HttpApiConfigError('the public HTTP listener needs a TLS certificate and key (or allowPlaintext: true, for tests and TLS-terminating proxies)');
  }
  await prepareAdminSocket(o.listen.adminSocket);
  const api = createHttpApi({ ...o, ...(pubListen?.tls ? { publicTls: pubListen.tls } : {}) });
  try {
    await api.admin.listen({ path: o.listen.adminSocket });
    restrictAdminSocket(o.listen.adminSocket);
    let publicAddress: HttpApiHandle['publicAddress'];
    if (pubListen) {
      await api.public.listen({ host: pubListen.host, port: pubListen.port });
      const a = api.public.server.address() as AddressInfo;
      publicAddress = { host: a.address, port: a.port };
    }
    o.logger.info('HTTP API listening', { adminSocket: o.listen.adminSocket, public: publicAddress, tls: Boolean(pubListen?.tls) });
    return { publicAddress, adminSocket: o.listen.adminSocket, api, close: () => api.close() };
  } catch (e) {
    await api.close();
    throw e;
  }
}
