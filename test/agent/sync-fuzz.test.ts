/**
 * What the server sends over SyncEntries is read defensively: garbage
 * entries and bundles are skipped with a log line, never thrown, and never
 * replace the bundle the agent already trusts.
 */
import { parseDerCertificates } from '../../src/spiffe/index.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { WireEntry, WireSyncEntries } from '../../src/agent/attestation/index.js';
import { SvidManager } from '../../src/agent/manager/index.js';
import { silentLogger } from '../../src/log/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { entry, FakeNode, TD } from './fake-node.js';

const node = new FakeNode();

function manager(): SvidManager {
  return new SvidManager({ trustDomain: TrustDomain.parse(TD), node, logger: silentLogger, initialX509Bundle: node.x509BundleDer, agentSvidExpiresAt: new Date(Date.now() + 3_600_000) });
}

const wireEntry: fc.Arbitrary<WireEntry> = fc.record({
  id: fc.string({ maxLength: 40 }),
  spiffe_id: fc.oneof(fc.string({ maxLength: 60 }), fc.constantFrom(`spiffe://${TD}/w`, 'spiffe://other.org/w', `spiffe://${TD}`, `spiffe://${TD}/a/../b`)),
  parent_id: fc.string({ maxLength: 20 }),
  selectors: fc.array(fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom('unix:uid:0', ':x', 'unix:', 'a:b:c')), { maxLength: 4 }),
  x509_svid_ttl: fc.integer(),
  jwt_svid_ttl: fc.integer(),
  dns_names: fc.array(fc.string({ maxLength: 20 }), { maxLength: 3 }),
  federates_with: fc.array(fc.oneof(fc.string({ maxLength: 20 }), fc.constant('partner.org')), { maxLength: 2 }),
  hint: fc.string({ maxLength: 20 }),
  revision: fc.integer(),
});

const bytes = fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a));
const bundleMap = fc.dictionary(fc.oneof(fc.string({ maxLength: 30 }), fc.constantFrom(`spiffe://${TD}`, 'spiffe://partner.org', 'BAD TD')), bytes, { maxKeys: 3 });

describe('SyncEntries input', () => {
  it('garbage entries and bundles never throw; the trusted X.509 bundle survives', () => {
    fc.assert(
      fc.property(fc.array(wireEntry, { maxLength: 6 }), bundleMap, bundleMap, fc.integer(), (entries, x509, jwt, revision) => {
        const m = manager();
        const u: WireSyncEntries = { entries, x509_bundles: x509, jwt_bundles: jwt, revision };
        m.applySync(u);
        // Whatever arrived, the trusted bundle is still a bundle of real certificates.
        expect(parseDerCertificates(m.bundles().own.x509Der, 64).length).toBeGreaterThan(0);
        for (const e of entries) void m.fetchJwtSvid(e.id, ['a']).catch(() => undefined);
        m.stop();
      }),
      { numRuns: 300 },
    );
  });

  it('keeps the valid entries of a snapshot that also has invalid ones', () => {
    const m = manager();
    m.applySync({
      entries: [entry('good', '/good', ['unix:uid:0']), entry('bad-id', '/x', ['unix:uid:0'], { spiffe_id: 'spiffe://other.org/x' }), entry('bad-sel', '/y', ['nocolon'])],
      x509_bundles: { [`spiffe://${TD}`]: Buffer.from('not DER') },
      jwt_bundles: {},
      revision: 3,
    });
    expect(m.stats.entries).toBe(1);
    expect(m.usesSelectorKind('unix:uid')).toBe(true);
    expect(m.bundles().own.x509Der.equals(node.x509BundleDer)).toBe(true);
    m.stop();
  });
});
