import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  agentConfigSchema,
  ConfigError,
  loadConfig,
  parseConfigText,
  parseDuration,
  parseHostPort,
  parseSize,
  serverConfigSchema,
} from '../../src/config/index.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keel-config-'));
  mkdirSync(join(dir, 'etc'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SERVER_YAML = `
server:
  trust_domain: example.org
  data_dir: ./data
  listen:
    node_api: 0.0.0.0:8081
    http: "[::1]:8080"
    admin_socket: /run/keel/admin.sock
    http_plaintext: true
  hsm:
    module: /usr/lib/softhsm/libsofthsm2.so
    token_label: keel
    pin_source: env:KEEL_HSM_PIN
  ca:
    key_type: ec-p384
    ttl: 7d
    subject: { common_name: keel CA, country: US }
  svid:
    default_x509_ttl: 1h
    default_jwt_ttl: 5m
    agent_ttl: 1h30m
  attestation:
    manufacturer_cas: [cas/swtpm-root.pem]
    firmware_policies: [/etc/keel/policies/secure-boot.yaml]
    pcrs: [0, 2, 4, 7]
  federation:
    trust_domains:
      - trust_domain: partner.test
        bundle_endpoint_url: https://partner.test/bundle
        profile: https_spiffe
        endpoint_spiffe_id: spiffe://partner.test/keel/server
`;

const AGENT_YAML = `
agent:
  trust_domain: example.org
  server: { address: keel.example.org:8081, bundle: bootstrap.pem }
  data_dir: /var/lib/keel-agent
  tpm: { tcti: "swtpm:host=127.0.0.1,port=2321", ek_kind: ecc-p384, ak_persistent_handle: "0x81010002" }
`;

function write(name: string, text: string): string {
  const p = join(dir, 'etc', name);
  writeFileSync(p, text);
  return p;
}

/** The issues of the ConfigError `fn` throws (and fails if it throws anything else or nothing). */
function issuesOf(fn: () => unknown): { path: string; message: string }[] {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return [...(e as ConfigError).issues];
  }
  throw new Error('expected a ConfigError');
}

const server = (text: string) => parseConfigText(text, serverConfigSchema, { file: 'server.yaml', baseDir: '/etc/keel' });
const withServer = (edit: (s: string) => string) => server(edit(SERVER_YAML));

describe('loading a valid file', () => {
  it('loads the server file: durations in seconds, paths absolute from the file, defaults filled in', () => {
    const c = loadConfig(write('server.yaml', SERVER_YAML), serverConfigSchema).server;
    expect(c.trust_domain.name).toBe('example.org');
    expect(c.data_dir).toBe(join(dir, 'etc', 'data'));
    expect(c.store).toEqual({ kind: 'sqlite', path: join(dir, 'etc', 'data', 'keel.db') });
    expect(c.listen.node_api).toEqual({ host: '0.0.0.0', port: 8081 });
    expect(c.listen.http).toEqual({ host: '::1', port: 8080 });
    expect(c.hsm).toMatchObject({ token: { kind: 'label', label: 'keel' }, pin_source: { kind: 'env', name: 'KEEL_HSM_PIN' }, sessions: 4 });
    expect(c.ca.ttl).toBe(7 * 86400);
    expect(c.svid).toEqual({ default_x509_ttl: 3600, default_jwt_ttl: 300, agent_ttl: 5400 });
    expect(c.attestation.manufacturer_cas).toEqual([join(dir, 'etc', 'cas', 'swtpm-root.pem')]);
    expect(c.attestation.nonce_ttl).toBe(60);
    expect(c.attestation.pcr_bank).toBe('sha256');
    expect(c.attestation.max_event_log_size).toBe(1 << 20);
    expect(c.jwt.key_type).toBe('ec-p256');
    expect(c.log_level).toBe('info');
    expect(c.federation.trust_domains[0]?.trust_domain.name).toBe('partner.test');
  });

  it('loads the agent file with its defaults', () => {
    const c = loadConfig(write('agent.yaml', AGENT_YAML), agentConfigSchema).agent;
    expect(c.server).toEqual({ address: [{ host: 'keel.example.org', port: 8081 }], bundle: join(dir, 'etc', 'bootstrap.pem') });
    expect(c.tpm).toEqual({ tcti: 'swtpm:host=127.0.0.1,port=2321', ek_kind: 'ecc-p384', ak_kind: 'rsa-2048', ak_persistent_handle: 0x81010002 });
    expect(c.workload_api).toEqual({ socket_path: '/run/keel/agent/api.sock', max_connections: 4096, max_connections_per_uid: 256, max_streams_per_uid: 1024, first_call_timeout: 10, idle_timeout: 300, svid_key_type: 'ec-p256' });
  });

  it('parses the value types', () => {
    expect(parseDuration('90s')).toBe(90);
    expect(parseDuration('1h30m')).toBe(5400);
    expect(parseDuration('7d')).toBe(604800);
    for (const bad of ['', '1', '1.5h', '-1h', 'h', '1w', '1h ', '24H']) expect(parseDuration(bad)).toBeUndefined();
    expect(parseSize('64KiB')).toBe(65536);
    expect(parseSize('10MB')).toBe(10_000_000);
    expect(parseSize('10XB')).toBeUndefined();
    expect(parseHostPort('[::1]:443')).toEqual({ host: '::1', port: 443 });
    for (const bad of ['host', 'host:0', 'host:65536', ':80', 'a b:80', '::1:80']) expect(parseHostPort(bad)).toBeUndefined();
  });
});

describe('errors name the offending key', () => {
  it('a bad duration', () => {
    const issues = issuesOf(() => withServer((s) => s.replace('ttl: 7d', 'ttl: abc')));
    expect(issues).toContainEqual({ path: 'server.ca.ttl', message: 'expected a duration like "24h", got "abc"' });
  });

  it('an unknown key, at any depth', () => {
    expect(issuesOf(() => withServer((s) => s.replace('    key_type: ec-p384', '    key_type: ec-p384\n    colour: blue')))).toEqual([
      { path: 'server.ca.colour', message: 'unknown key' },
    ]);
    expect(issuesOf(() => server(SERVER_YAML + 'agent: {}\n'))).toEqual([{ path: 'agent', message: 'unknown key' }]);
    expect(issuesOf(() => withServer((s) => s.replace('token_label: keel', 'token_label: keel\n    pin: "1234"')))).toEqual([
      { path: 'server.hsm.pin', message: 'unknown key' },
    ]);
  });

  it('a missing key, a bad enum, a bad list element, a bad address', () => {
    expect(issuesOf(() => withServer((s) => s.replace('  trust_domain: example.org\n', '')))).toEqual([
      { path: 'server.trust_domain', message: 'required (string)' },
    ]);
    expect(issuesOf(() => withServer((s) => s.replace('key_type: ec-p384', 'key_type: ed25519')))[0]?.path).toBe('server.ca.key_type');
    expect(issuesOf(() => withServer((s) => s.replace('pcrs: [0, 2, 4, 7]', 'pcrs: [0, 2, 99]')))[0]?.path).toBe('server.attestation.pcrs[2]');
    expect(issuesOf(() => withServer((s) => s.replace('node_api: 0.0.0.0:8081', 'node_api: 8081')))).toEqual([
      { path: 'server.listen.node_api', message: 'expected host:port like "0.0.0.0:8081", got 8081' },
    ]);
  });

  it('every problem at once', () => {
    const issues = issuesOf(() =>
      withServer((s) => s.replace('ttl: 7d', 'ttl: soon').replace('node_api: 0.0.0.0:8081', 'node_api: nowhere').replace('trust_domain: example.org', 'trust_domain: Example.ORG')),
    );
    expect(issues.map((i) => i.path).sort()).toEqual(['server.ca.ttl', 'server.listen.node_api', 'server.trust_domain']);
    const err = (() => {
      try {
        withServer((s) => s.replace('ttl: 7d', 'ttl: soon').replace('node_api: 0.0.0.0:8081', 'node_api: nowhere'));
      } catch (e) {
        return e as ConfigError;
      }
    })();
    expect(err?.message).toContain('server.yaml: 2 problems');
    expect(err?.message).toContain('server.ca.ttl: expected a duration like "24h", got "soon"');
  });

  it('the CA TTL must be at least six times the longest SVID TTL', () => {
    const issues = issuesOf(() => withServer((s) => s.replace('ttl: 7d', 'ttl: 8h')));
    expect(issues).toHaveLength(1);
    expect(issues[0]?.path).toBe('server.ca.ttl');
    expect(issues[0]?.message).toContain('≥ 32400s');
    expect(withServer((s) => s.replace('ttl: 7d', 'ttl: 9h')).server.ca.ttl).toBe(32400);
  });

  it('jwt.issuer and jwt.oidc_domains: accepted as relying parties compare them, anything else refused by path', () => {
    const jwt = (body: string) => withServer((s) => s.replace('  svid:\n', `  jwt:\n${body}  svid:\n`));
    const ok = jwt('    issuer: https://oidc.example.org/keel\n    oidc_domains: [oidc.example.org, "keel.example.net:8443"]\n');
    expect(ok.server.jwt.issuer).toBe('https://oidc.example.org/keel');
    expect(ok.server.jwt.oidc_domains).toEqual(['oidc.example.org', 'keel.example.net:8443']);
    expect(withServer((s) => s).server.jwt.oidc_domains).toBeUndefined();
    for (const bad of ['http://oidc.example.org', 'https://u@oidc.example.org', 'https://OIDC.example.org', 'https://oidc.example.org:443', 'https://oidc.example.org/?x']) {
      expect(issuesOf(() => jwt(`    issuer: "${bad}"\n`)).map((i) => i.path), bad).toEqual(['server.jwt.issuer']);
    }
    for (const bad of ['Oidc.example.org', 'https://oidc.example.org', 'oidc.example.org:443', 'a@b.org', 'b.org/x']) {
      expect(issuesOf(() => jwt(`    oidc_domains: ["${bad}"]\n`)).map((i) => i.path), bad).toEqual(['server.jwt.oidc_domains[0]']);
    }
    expect(issuesOf(() => jwt('    oidc_domains: [a.org, a.org]\n')).map((i) => i.path)).toEqual(['server.jwt.oidc_domains']);
  });

  it('the public listener needs a certificate unless plain HTTP is asked for', () => {
    const issues = issuesOf(() => withServer((s) => s.replace('    http_plaintext: true\n', '')));
    expect(issues.map((i) => i.path)).toEqual(['server.listen.http_tls']);
    const tls = withServer((s) => s.replace('    http_plaintext: true\n', '    http_tls: { cert: web.pem, key: web.key }\n'));
    expect(tls.server.listen.http_tls).toEqual({ cert: '/etc/keel/web.pem', key: '/etc/keel/web.key' });
  });

  it('attestation needs a manufacturer CA or an EK allow-list', () => {
    expect(issuesOf(() => withServer((s) => s.replace('manufacturer_cas: [cas/swtpm-root.pem]', 'manufacturer_cas: []')))).toEqual([
      { path: 'server.attestation', message: 'at least one of manufacturer_cas and ek_allow_list must be non-empty' },
    ]);
    const ok = withServer((s) => s.replace('manufacturer_cas: [cas/swtpm-root.pem]', `ek_allow_list: ["${'AB'.repeat(32)}"]`));
    expect(ok.server.attestation.ek_allow_list).toEqual(['ab'.repeat(32)]);
  });

  it('store: postgres with host or socket, password file or env, sslmode and CA; contradictions refused by path', () => {
    const pgStore = (yaml: string) => withServer((s) => s.replace('  hsm:', `  store:\n    postgres: ${yaml}\n  hsm:`));
    expect(pgStore('{ host: db.example.org, database: keel, user: keel, password_file: secrets/db, ca_file: db-ca.pem }').server.store).toEqual({
      kind: 'postgres',
      connection: {
        host: 'db.example.org',
        port: 5432,
        database: 'keel',
        user: 'keel',
        password: { file: '/etc/keel/secrets/db' },
        sslmode: 'verify-full',
        caFile: '/etc/keel/db-ca.pem',
        poolSize: 10,
      },
    });
    expect(pgStore('{ socket_dir: /run/postgresql, port: 5433, database: keel, user: keel, password_env: KEEL_DB_PASSWORD, pool_size: 20 }').server.store).toEqual({
      kind: 'postgres',
      connection: { socketDir: '/run/postgresql', port: 5433, database: 'keel', user: 'keel', password: { env: 'KEEL_DB_PASSWORD' }, sslmode: 'disable', poolSize: 20 },
    });
    const bad = (yaml: string) => issuesOf(() => pgStore(yaml));
    expect(bad('{ database: keel, user: keel }')).toEqual([{ path: 'server.store.postgres', message: 'give exactly one of host and socket_dir' }]);
    expect(bad('{ host: db, database: keel, user: keel, password_file: a, password_env: B }')[0]?.message).toBe('give at most one of password_file and password_env');
    expect(bad('{ host: db, database: keel, user: keel, sslmode: verify-ca }')).toEqual([{ path: 'server.store.postgres.ca_file', message: 'sslmode verify-ca needs a ca_file' }]);
    expect(bad('{ socket_dir: /run/postgresql, database: keel, user: keel, sslmode: require }')[0]?.path).toBe('server.store.postgres.sslmode');
    expect(bad('{ host: db, database: keel, user: keel, sslmode: prefer }')[0]?.path).toBe('server.store.postgres.sslmode');
    expect(bad('{ host: db, database: keel, user: keel, sslmode: require, ca_file: ca.pem }')[0]?.path).toBe('server.store.postgres.ca_file');
    expect(bad('{ host: db, database: keel, user: keel, password_env: "not a name" }')[0]?.path).toBe('server.store.postgres.password_env');
    expect(bad('{ host: db, database: keel, user: keel, pool_size: 0 }')[0]?.path).toBe('server.store.postgres.pool_size');
    expect(issuesOf(() => withServer((s) => s.replace('  hsm:', '  store: { sqlite: { path: a.db }, postgres: { host: db, database: k, user: k } }\n  hsm:')))[0]).toEqual({
      path: 'server.store',
      message: 'expected exactly one of sqlite and postgres',
    });
  });

  it('token and upstream keys are exclusive', () => {
    expect(issuesOf(() => withServer((s) => s.replace('token_label: keel', 'token_label: keel\n    token_serial: "1234"')))[0]?.path).toBe('server.hsm');
    expect(
      issuesOf(() => withServer((s) => s.replace('    subject:', '    upstream: { cert: up.pem, key_file: up.key, hsm_key_label: x }\n    subject:')))[0]?.path,
    ).toBe('server.ca.upstream');
    const up = withServer((s) => s.replace('    subject:', '    upstream: { cert: up.pem, hsm_key_label: root }\n    subject:'));
    expect(up.server.ca.upstream).toEqual({ cert: '/etc/keel/up.pem', key: { kind: 'hsm', label: 'root' } });
  });

  it('never echoes what was written as a PIN source or a DSN, and refuses ${VAR}', () => {
    const err = (() => {
      try {
        withServer((s) => s.replace('pin_source: env:KEEL_HSM_PIN', 'pin_source: "87654321"'));
      } catch (e) {
        return e as ConfigError;
      }
    })();
    expect(err?.issues.map((i) => i.path)).toEqual(['server.hsm.pin_source']);
    expect(err?.message).not.toContain('87654321');
    const dsn = issuesOf(() => withServer((s) => s.replace('  hsm:', '  store: { postgres: { dsn: "postgres://u:hunter2@db" } }\n  hsm:')));
    expect(dsn.map((i) => i.path)).toContain('server.store.postgres.dsn');
    expect(JSON.stringify(dsn)).not.toContain('hunter2');
    const pw = issuesOf(() => withServer((s) => s.replace('  hsm:', '  store: { postgres: { host: db, database: k, user: k, password: hunter2 } }\n  hsm:')));
    expect(pw).toEqual([{ path: 'server.store.postgres.password', message: 'unknown key' }]);
    expect(JSON.stringify(pw)).not.toContain('hunter2');
    expect(issuesOf(() => withServer((s) => s.replace('token_label: keel', 'token_label: ${TOKEN}')))[0]?.path).toBe('server.hsm.token_label');
    expect(withServer((s) => s.replace('pin_source: env:KEEL_HSM_PIN', 'pin_source: file:secrets/pin')).server.hsm.pin_source).toEqual({
      kind: 'file',
      path: '/etc/keel/secrets/pin',
    });
  });

  it('bad YAML, duplicate keys, alias bombs, a missing or huge file', () => {
    expect(issuesOf(() => server('server: [unclosed'))[0]?.path).toBe('(file)');
    expect(issuesOf(() => server('server: {}\nserver: {}\n'))[0]?.path).toBe('(file)');
    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]'];
    for (let i = 1; i < 12; i++) bomb.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(10).fill('*' + String.fromCharCode(96 + i)).join(', ')}]`);
    expect(issuesOf(() => server(bomb.join('\n')))[0]?.path).toBe('(file)');
    expect(issuesOf(() => loadConfig(join(dir, 'nope.yaml'), serverConfigSchema))[0]?.message).toMatch(/cannot read/);
    expect(issuesOf(() => server('#'.repeat(2 << 20)))[0]?.message).toMatch(/larger than/);
    expect(issuesOf(() => server(''))).toEqual([{ path: '(root)', message: 'expected object, got null' }]);
    expect(issuesOf(() => parseConfigText(SERVER_YAML, agentConfigSchema, { file: 'a.yaml', baseDir: '/' }))).toContainEqual({
      path: 'server',
      message: 'unknown key',
    });
  });
});

describe('robustness', () => {
  const check = (text: string) => {
    try {
      server(text);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
    }
    try {
      parseConfigText(text, agentConfigSchema, { file: 'a.yaml', baseDir: '/' });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
    }
  };

  it('random text gives a value or a ConfigError, nothing else', () => {
    fc.assert(fc.property(fc.string({ maxLength: 300 }), check), { numRuns: 300 });
    fc.assert(fc.property(fc.jsonValue({ maxDepth: 4 }).map((v) => stringify(v)), check), { numRuns: 300 });
  });

  it('a valid file with one value replaced by random YAML gives a value or a ConfigError', () => {
    const lines = SERVER_YAML.split('\n');
    const valueLines = lines.map((l, i) => [l, i] as const).filter(([l]) => /:\s*\S/.test(l));
    fc.assert(
      fc.property(
        fc.nat(valueLines.length - 1),
        fc.oneof(fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v)), fc.string({ maxLength: 40 }).map((s) => JSON.stringify(s)), fc.string({ maxLength: 20 })),
        (k, replacement) => {
          const [line, i] = valueLines[k]!;
          const copy = [...lines];
          copy[i] = line.replace(/:\s*.*$/, `: ${replacement}`);
          check(copy.join('\n'));
        },
      ),
      { numRuns: 500 },
    );
  });
});
