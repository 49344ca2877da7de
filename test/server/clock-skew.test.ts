/**
 * Clock tolerance on the server side (issue 15): `server.clock_skew_tolerance`
 * (default 60 s) is the backdate of X.509 notBefore, so an agent up to that far
 * behind never sees a not-yet-valid SVID or CA certificate; an old key stays
 * in the bundle that much past its last SVID. Keys in a real SoftHSM token.
 */
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfigText, serverConfigSchema } from '../../src/config/index.js';
import { Hsm } from '../../src/hsm/index.js';
import { CertificateAuthority, MemoryCaJournal } from '../../src/server/ca/index.js';
import { caTestToken, ecKey, makeCsr, FakeClock, type CaTestToken } from '../ca/helpers.js';

const yaml = (extra: { top?: string; ca?: string; svid?: string } = {}) => `
server:
  trust_domain: example.org
  data_dir: /var/lib/keel
${extra.top ?? ''}
  listen: { node_api: 0.0.0.0:8081, http: 0.0.0.0:8443, http_plaintext: true, admin_socket: /run/keel/admin.sock }
  hsm: { module: /usr/lib/softhsm/libsofthsm2.so, token_label: keel, pin_source: env:KEEL_HSM_PIN }
  ca:
    ttl: 1d
${extra.ca ?? ''}
  svid:
    default_x509_ttl: 1h
    agent_ttl: ${extra.svid ?? '1h'}
  attestation: { ek_allow_list: ["${'a'.repeat(64)}"] }
`;
const parse = (text: string) => parseConfigText(text, serverConfigSchema, { file: 'server.yaml', baseDir: '/etc/keel' }).server;
const issuesOf = (text: string): string[] => {
  try {
    parse(text);
  } catch (e) {
    if (e instanceof ConfigError) return e.issues.map((i) => `${i.path}: ${i.message}`);
    throw e;
  }
  return [];
};

describe('clock_skew_tolerance and ca.min_publish in the server configuration', () => {
  it('defaults the tolerance to 60 s and leaves the minimum publication to the CA', () => {
    const c = parse(yaml());
    expect(c.clock_skew_tolerance).toBe(60);
    expect(c.ca.min_publish).toBeUndefined();
    expect(parse(yaml({ top: '  clock_skew_tolerance: 2m', ca: '    min_publish: 2h' }))).toMatchObject({ clock_skew_tolerance: 120, ca: { min_publish: 7200 } });
  });
  it('refuses a tolerance as long as an SVID, and a minimum publication the schedule cannot keep, naming the key', () => {
    expect(issuesOf(yaml({ top: '  clock_skew_tolerance: 1h' })).join('\n')).toMatch(/server\.clock_skew_tolerance: must be under the shortest X\.509-SVID TTL \(3600s\)/);
    expect(issuesOf(yaml({ ca: '    min_publish: 9h' })).join('\n')).toMatch(/server\.ca\.min_publish: must be at most a third/);
    expect(issuesOf(yaml({ top: '  clock_skew_tolerance: soon' })).join('\n')).toMatch(/server\.clock_skew_tolerance/);
  });
});

describe('a CA with a 60 s tolerance (SoftHSM)', () => {
  let t: CaTestToken;
  let hsm: Hsm;
  let ca: CertificateAuthority;
  const clock = new FakeClock(Date.UTC(2030, 5, 1, 12));
  const start = clock.ms;

  beforeAll(async () => {
    t = await caTestToken('keel-skew');
    hsm = await Hsm.open(t.config);
    ca = await CertificateAuthority.open({
      trustDomain: 'example.org', keys: hsm, journal: new MemoryCaJournal(), now: clock.now, rotationCheckIntervalMs: 0,
      backdateSeconds: parse(yaml()).clock_skew_tolerance,
      x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3600 }, jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
    });
  });
  afterAll(async () => {
    await ca?.close();
    await hsm?.close();
    await t?.tok.destroy();
  });

  it('an agent 59 s behind sees the SVID and the CA certificate it chains to as valid; a minute and more behind, not', async () => {
    clock.advance(5);
    const svid = await ca.issueX509Svid({ csr: makeCsr(ecKey()), spiffeId: 'spiffe://example.org/w', ttlSeconds: 600 });
    const leaf = new X509Certificate(svid.certDer);
    const caCert = new X509Certificate(ca.activeCaCertificate()!);
    const validAt = (c: X509Certificate, ms: number) => new Date(c.validFrom).getTime() <= ms && ms <= new Date(c.validTo).getTime();
    for (const behind of [15, 45, 59]) {
      expect(validAt(leaf, clock.ms - behind * 1000)).toBe(true);
      expect(validAt(caCert, start - behind * 1000)).toBe(true);
    }
    expect(validAt(leaf, clock.ms - 61_000)).toBe(false);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
  });
});
