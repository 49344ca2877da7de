/**
 * SignWitSvid through the real Node API: an agent attested with swtpm, the
 * CA's JWT key in SoftHSM, mTLS with the TPM-bound agent credential. The WIT
 * is checked by python3-jwcrypto against the WIT bundle the agent derives
 * from the JWT bundle it syncs (what FetchWITBundles serves), and the audit
 * names every issuance and refusal.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attestNode, NodeApiClient, NodeApiError, type AgentSvid, type WireSyncEntries } from '../../src/agent/attestation/index.js';
import { witKeyPair } from '../../src/agent/manager/wit-svids.js';
import { witBundlesResponse } from '../../src/agent/workload/wit.js';
import { parseSelector } from '../../src/server/store/index.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { jwtBundleFromJson } from '../../src/spiffe/index.js';
import { HsmFixture, TD, startServer, startTpm, type TestServer, type TestTpm } from './harness.js';

const PYTHON = '/usr/bin/python3';
const VERIFY = join(import.meta.dirname, '..', 'workload', 'fixtures', 'jwcrypto_verify_wit.py');

let hsm: HsmFixture;
let tpm: TestTpm;
let server: TestServer;
let svid: AgentSvid;

beforeAll(async () => {
  hsm = await HsmFixture.create();
  tpm = await startTpm();
  server = await startServer(hsm.hsm, { manufacturerCaPems: tpm.sim.manufacturerCaPems });
  svid = await attestNode({ device: tpm.device, ekKind: 'rsa-2048', agentKey: tpm.agentKey, serverAddress: server.address, serverCaBundle: server.caPem, trustDomain: TD });
});
afterAll(async () => {
  await server?.close();
  await tpm?.close();
  await hsm?.close();
});

function syncOnce(client: NodeApiClient): Promise<WireSyncEntries> {
  return new Promise((resolve, reject) => {
    const cancel = client.syncEntries(
      (u) => {
        cancel();
        resolve(u);
      },
      (e) => reject(e),
    );
  });
}

describe('SignWitSvid', () => {
  it('mints a WIT-SVID with the HSM JWT key that python3-jwcrypto verifies; refuses other entries and bad keys, with audit lines', async () => {
    const td = TrustDomain.parse(TD);
    const mine = (await server.store.createEntry({ spiffeId: td.child('/wit'), parentId: SpiffeId.parse(svid.spiffeId), selectors: [parseSelector('unix:uid:1000')], jwtSvidTtl: 120 })).id;
    const notMine = (await server.store.createEntry({ spiffeId: td.child('/elsewhere'), parentId: td.child('/keel/agent/tpm/' + '0'.repeat(64)), selectors: [parseSelector('unix:uid:1')] })).id;
    const client = new NodeApiClient({ address: server.address, serverCaBundle: server.caPem, trustDomain: TD, clientSvid: tpm.credential(svid.svidChain) });
    try {
      server.takeAudit();
      const { publicJwk, privateJwk } = await witKeyPair();
      const wit = await client.signWitSvid(mine, publicJwk);
      const ttl = (wit.expiresAt.getTime() - Date.now()) / 1000;
      expect(ttl).toBeGreaterThan(100);
      expect(ttl).toBeLessThanOrEqual(121);

      // The WIT bundle as the agent serves it, from the JWT bundle the server syncs.
      const sync = await syncOnce(client);
      const own = { trustDomain: td, x509Der: Buffer.alloc(0), jwks: sync.jwt_bundles[`spiffe://${TD}`]! };
      const witBundle = witBundlesResponse({ own, federated: [] }).bundles[`spiffe://${TD}`]!;
      const jwtKid = [...jwtBundleFromJson(td, own.jwks).jwtAuthorities][0]![0];
      const out = await new Promise<string>((resolve, reject) => {
        const c = execFile(PYTHON, [VERIFY], { timeout: 30_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
        c.stdin!.end(JSON.stringify({ bundle: witBundle, svids: [{ spiffe_id: `spiffe://${TD}/wit`, wit_svid: wit.token, wit_svid_key: privateJwk }] }));
      });
      const [r] = JSON.parse(out) as Record<string, unknown>[];
      expect(r).toMatchObject({ verified: true, typ: 'wit+jwt', kid: `wit-${jwtKid}`, sub: `spiffe://${TD}/wit`, exp_in_future: true, cnf_alg: 'ES256', pop_verified: true });

      const refused = await client.signWitSvid(notMine, publicJwk).catch((e: unknown) => e);
      expect((refused as NodeApiError).reason).toBe('not-authorized');
      const priv = JSON.stringify({ ...generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' }), alg: 'ES256' });
      const leaked = await client.signWitSvid(mine, priv).catch((e: unknown) => e);
      expect(leaked).toBeInstanceOf(NodeApiError);
      expect((leaked as NodeApiError).reason).toBe('invalid-request');
      expect((leaked as NodeApiError).detail).toMatch(/private member "d"/);
      const noAlg = await client.signWitSvid(mine, JSON.stringify({ ...JSON.parse(publicJwk), alg: undefined })).catch((e: unknown) => e);
      expect((noAlg as NodeApiError).reason).toBe('invalid-request');

      const audit = server.takeAudit().filter((e) => e.event.startsWith('svid.'));
      expect(audit[0]).toMatchObject({ event: 'svid.wit_issued', spiffeId: `spiffe://${TD}/wit`, entryId: mine, agentId: svid.spiffeId, keyId: `wit-${jwtKid}` });
      expect(typeof (audit[0] as { cnfThumbprint: string }).cnfThumbprint).toBe('string');
      expect(audit.slice(1).map((e) => [e.event, (e as { reason: string }).reason, (e as { svid?: string }).svid])).toEqual([
        ['svid.refused', 'not-authorized', 'wit'],
        ['svid.refused', 'invalid-request', 'wit'],
        ['svid.refused', 'invalid-request', 'wit'],
      ]);
    } finally {
      client.close();
    }
  });
});
