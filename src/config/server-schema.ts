/**
 * The keel server's configuration file. One top-level `server:` key, so error
 * paths read `server.ca.ttl` and a file meant for the agent is refused as such.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { normalizeJwtIssuer, normalizeOidcDomain } from '../spiffe/oidc.js';
import { configPath, duration, hostPort, logLevel, secretSource, sha256Hex, shown, size, trustDomain } from './values.js';

/** The CA must outlive every SVID it signs several times over (SPIFFE servers' rotation rule). */
export const CA_TTL_FACTOR = 6;

const keyType = z.enum(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072']);

const SSL_MODES = ['disable', 'require', 'verify-ca', 'verify-full'] as const;

/** The sslmode in force: as given, else none over a Unix socket and verify-full over TCP. */
function sslmodeOf(p: { readonly sslmode?: (typeof SSL_MODES)[number] | undefined; readonly socket_dir?: string | undefined }): (typeof SSL_MODES)[number] {
  return p.sslmode ?? (p.socket_dir !== undefined ? 'disable' : 'verify-full');
}

/**
 * Several servers on one PostgreSQL database. The password is never written
 * here: `password_file` or `password_env` says where it is (an unknown
 * `password:` key is refused like any other, and never echoed).
 */
const postgresSchema = z
  .strictObject({
    host: z.string().min(1).max(255).optional(),
    port: z.number().int().min(1).max(65535).default(5432),
    socket_dir: configPath().optional(),
    database: z.string().min(1).max(63),
    user: z.string().min(1).max(63),
    password_file: configPath().optional(),
    password_env: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected the name of an environment variable')
      .optional(),
    sslmode: z.enum(SSL_MODES).optional(),
    ca_file: configPath().optional(),
    pool_size: z.number().int().min(1).max(1000).default(10),
  })
  .superRefine((p, ctx) => {
    if ((p.host === undefined) === (p.socket_dir === undefined)) ctx.addIssue({ code: 'custom', message: 'give exactly one of host and socket_dir' });
    if (p.password_file !== undefined && p.password_env !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'give at most one of password_file and password_env' });
    }
    const mode = sslmodeOf(p);
    if (p.socket_dir !== undefined && mode !== 'disable') {
      ctx.addIssue({ code: 'custom', path: ['sslmode'], message: 'a Unix socket has no TLS: leave sslmode out (or disable) with socket_dir' });
    }
    if (mode === 'verify-ca' && p.ca_file === undefined) ctx.addIssue({ code: 'custom', path: ['ca_file'], message: 'sslmode verify-ca needs a ca_file' });
    if (p.ca_file !== undefined && (mode === 'disable' || mode === 'require')) {
      ctx.addIssue({ code: 'custom', path: ['ca_file'], message: `a ca_file is only used with sslmode verify-ca or verify-full (sslmode is ${mode})` });
    }
  })
  .transform((p) => ({
    kind: 'postgres' as const,
    connection: {
      ...(p.host !== undefined ? { host: p.host } : { socketDir: p.socket_dir! }),
      port: p.port,
      database: p.database,
      user: p.user,
      ...(p.password_file !== undefined ? { password: { file: p.password_file } } : p.password_env !== undefined ? { password: { env: p.password_env } } : {}),
      sslmode: sslmodeOf(p),
      ...(p.ca_file !== undefined ? { caFile: p.ca_file } : {}),
      poolSize: p.pool_size,
    },
  }));

const storeSchema = z
  .strictObject({
    sqlite: z.strictObject({ path: configPath() }).optional(),
    postgres: postgresSchema.optional(),
  })
  .superRefine((s, ctx) => {
    if ((s.sqlite === undefined) === (s.postgres === undefined)) ctx.addIssue({ code: 'custom', message: 'expected exactly one of sqlite and postgres' });
  })
  .transform((s) => s.postgres ?? { kind: 'sqlite' as const, path: s.sqlite?.path ?? '' });

const hsmSchema = z
  .strictObject({
    module: configPath(),
    token_label: z.string().min(1).max(32).optional(),
    token_serial: z.string().min(1).max(16).optional(),
    pin_source: secretSource(),
    sessions: z.number().int().min(1).max(256).default(4),
  })
  .superRefine((h, ctx) => {
    if ((h.token_label === undefined) === (h.token_serial === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of token_label and token_serial' });
    }
  })
  .transform(({ token_label, token_serial, ...rest }) => ({
    ...rest,
    token: token_label !== undefined ? { kind: 'label' as const, label: token_label } : { kind: 'serial' as const, serial: token_serial! },
  }));

const upstreamSchema = z
  .strictObject({
    cert: configPath(),
    key_file: configPath().optional(),
    hsm_key_label: z.string().min(1).max(128).optional(),
  })
  .superRefine((u, ctx) => {
    if ((u.key_file === undefined) === (u.hsm_key_label === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of key_file and hsm_key_label' });
    }
  })
  .transform(({ cert, key_file, hsm_key_label }) => ({
    cert,
    key: key_file !== undefined ? { kind: 'file' as const, path: key_file } : { kind: 'hsm' as const, label: hsm_key_label! },
  }));

const caSchema = z.strictObject({
  key_type: keyType.default('ec-p256'),
  ttl: duration(),
  subject: z
    .strictObject({
      common_name: z.string().min(1).max(64).optional(),
      organization: z.string().min(1).max(64).optional(),
      country: z.string().regex(/^[A-Z]{2}$/, 'expected a two-letter country code like "US"').optional(),
    })
    .default({}),
  upstream: upstreamSchema.optional(),
  // How long a prepared key is in the bundle before it may sign; default the longest X.509-SVID TTL.
  min_publish: duration().optional(),
});

const jwtSchema = z.strictObject({
  key_type: keyType.default('ec-p256'),
  // Lifetime of a JWT signing key; by default the CA TTL.
  key_ttl: duration().optional(),
  // iss of every JWT-SVID, and the issuer OIDC discovery names (compared byte for byte by relying parties).
  issuer: z
    .string()
    .refine(
      (v) => normalizeJwtIssuer(v) !== undefined,
      'expected an https URL without userinfo, query or fragment, host in lowercase and no :443 (as relying parties compare it)',
    )
    .optional(),
  // Host names OIDC discovery answers for, as SPIRE's OIDC provider `domains`: a request whose Host is
  // listed gets https://<name> as issuer (or `issuer`, when set); any other Host gets 404.
  oidc_domains: z
    .array(z.string().refine((v) => normalizeOidcDomain(v) !== undefined, 'expected a lowercase DNS name, optionally with a port other than 443'))
    .refine((d) => new Set(d).size === d.length, 'domains must not repeat')
    .optional(),
});

const svidSchema = z.strictObject({
  default_x509_ttl: duration().default(3600),
  default_jwt_ttl: duration().default(300),
  agent_ttl: duration().default(3600),
});

const attestationSchema = z
  .strictObject({
    manufacturer_cas: z.array(configPath()).default([]),
    ek_allow_list: z.array(sha256Hex()).default([]),
    firmware_policies: z.array(configPath()).default([]),
    nonce_ttl: duration().default(60),
    pcr_bank: z.enum(['sha1', 'sha256', 'sha384']).default('sha256'),
    pcrs: z
      .array(z.number().int().min(0).max(23))
      .min(1)
      .refine((p) => new Set(p).size === p.length, 'PCR indices must not repeat')
      .default([0, 1, 2, 3, 4, 5, 6, 7]),
    max_event_log_size: size().default(1 << 20),
    /** Unanswered challenges at once from one peer address, and in all: beyond, RESOURCE_EXHAUSTED. */
    max_challenges_per_peer: z.number().int().min(1).max(100_000).default(16),
    max_challenges: z.number().int().min(1).max(1_000_000).default(1024),
  })
  .superRefine((a, ctx) => {
    if (a.manufacturer_cas.length === 0 && a.ek_allow_list.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'at least one of manufacturer_cas and ek_allow_list must be non-empty' });
    }
  });

const federatedTrustDomain = z
  .strictObject({
    trust_domain: trustDomain(),
    bundle_endpoint_url: z.string().refine((v) => {
      try {
        return new URL(v).protocol === 'https:';
      } catch {
        return false;
      }
    }, 'expected an https URL'),
    profile: z.enum(['https_web', 'https_spiffe']),
    endpoint_spiffe_id: z.string().optional(),
  })
  .superRefine((f, ctx) => {
    if (f.profile === 'https_spiffe' && f.endpoint_spiffe_id === undefined) {
      ctx.addIssue({ code: 'custom', path: ['endpoint_spiffe_id'], message: 'required for the https_spiffe profile' });
    }
    if (f.profile === 'https_web' && f.endpoint_spiffe_id !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['endpoint_spiffe_id'], message: 'only for the https_spiffe profile' });
    }
  });

const federationSchema = z.strictObject({
  bundle_endpoint: z.strictObject({ address: hostPort(), refresh_hint: duration().default(300) }).optional(),
  trust_domains: z.array(federatedTrustDomain).default([]),
});

const serverSection = z
  .strictObject({
    trust_domain: trustDomain(),
    data_dir: configPath(),
    log_level: logLevel(),
    listen: z.strictObject({
      node_api: hostPort(),
      http: hostPort(),
      // Web-PKI certificate for the public listener (bundle endpoint, OIDC discovery).
      http_tls: z.strictObject({ cert: configPath(), key: configPath() }).optional(),
      // Plain HTTP on the public listener; admin calls are refused there regardless.
      http_plaintext: z.boolean().default(false),
      admin_socket: configPath(),
    }),
    // SPIFFE IDs allowed to call the admin API over mTLS, besides entries marked admin.
    admin_ids: z.array(z.string().min(1)).default([]),
    // Clock skew tolerated between this server and agents/relying parties: X.509 notBefore is backdated by it.
    clock_skew_tolerance: duration().default(60),
    store: storeSchema.optional(),
    hsm: hsmSchema,
    ca: caSchema,
    jwt: jwtSchema.default({ key_type: 'ec-p256' }),
    svid: svidSchema.default({ default_x509_ttl: 3600, default_jwt_ttl: 300, agent_ttl: 3600 }),
    attestation: attestationSchema,
    federation: federationSchema.default({ trust_domains: [] }),
  })
  .superRefine((s, ctx) => {
    if (!s.listen.http_tls && !s.listen.http_plaintext) {
      ctx.addIssue({ code: 'custom', path: ['listen', 'http_tls'], message: 'give a certificate for the public listener, or set listen.http_plaintext: true' });
    }
    const longest = Math.max(s.svid.default_x509_ttl, s.svid.default_jwt_ttl, s.svid.agent_ttl);
    if (s.ca.ttl < CA_TTL_FACTOR * longest) {
      ctx.addIssue({
        code: 'custom',
        path: ['ca', 'ttl'],
        message: `must be at least ${CA_TTL_FACTOR} × the longest SVID TTL (${longest}s), i.e. ≥ ${CA_TTL_FACTOR * longest}s; got ${s.ca.ttl}s`,
      });
    }
    // A certificate whose whole life fits inside the tolerance would be renewed as soon as it arrives.
    const shortestX509 = Math.min(s.svid.default_x509_ttl, s.svid.agent_ttl);
    if (s.clock_skew_tolerance >= shortestX509) {
      ctx.addIssue({ code: 'custom', path: ['clock_skew_tolerance'], message: `must be under the shortest X.509-SVID TTL (${shortestX509}s); got ${s.clock_skew_tolerance}s` });
    }
    if (s.ca.min_publish !== undefined) {
      // The gap between preparing (1/2 of the life left) and activating (1/6) a key.
      const gap = Math.floor(Math.min(s.ca.ttl, s.jwt.key_ttl ?? s.ca.ttl) / 3);
      if (s.ca.min_publish > gap) {
        ctx.addIssue({ code: 'custom', path: ['ca', 'min_publish'], message: `must be at most a third of the CA (and JWT key) TTL (${gap}s), or every rotation would be late; got ${s.ca.min_publish}s` });
      }
    }
    s.federation.trust_domains.forEach((f, i) => {
      if (f.trust_domain.equals(s.trust_domain)) {
        ctx.addIssue({ code: 'custom', path: ['federation', 'trust_domains', i, 'trust_domain'], message: `${shown(f.trust_domain.name)} is this server's own trust domain` });
      }
    });
  })
  .transform(({ store, ...s }) => ({
    ...s,
    // The embedded store lives in data_dir unless told otherwise.
    store: store ?? { kind: 'sqlite' as const, path: join(s.data_dir, 'keel.db') },
  }));

export const serverConfigSchema = z.strictObject({ server: serverSection });

export type ServerConfigFile = z.output<typeof serverConfigSchema>;
/** What the server runs with: every duration in seconds, every path absolute. */
export type ServerConfig = ServerConfigFile['server'];
