/**
 * The keel server's configuration file. One top-level `server:` key, so error
 * paths read `server.ca.ttl` and a file meant for the agent is refused as such.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { configPath, duration, hostPort, logLevel, secretSource, sha256Hex, shown, size, trustDomain } from './values.js';

/** The CA must outlive every SVID it signs several times over (SPIFFE servers' rotation rule). */
export const CA_TTL_FACTOR = 6;

const keyType = z.enum(['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072']);

const storeSchema = z
  .strictObject({
    sqlite: z.strictObject({ path: configPath() }).optional(),
    // Reserved: several servers on one PostgreSQL database. The DSN may hold a password: never echoed.
    postgres: z.strictObject({ dsn: z.string() }).optional(),
  })
  .superRefine((s, ctx) => {
    if (s.postgres) ctx.addIssue({ code: 'custom', path: ['postgres'], message: 'PostgreSQL is not supported yet; use sqlite' });
    else if (!s.sqlite) ctx.addIssue({ code: 'custom', message: 'expected one of sqlite or postgres' });
  })
  .transform((s) => ({ kind: 'sqlite' as const, path: s.sqlite?.path ?? '' }));

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
  issuer: z
    .string()
    .refine((v) => {
      try {
        const u = new URL(v);
        return u.protocol === 'https:' && !u.search && !u.hash;
      } catch {
        return false;
      }
    }, 'expected an https URL without query or fragment')
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
