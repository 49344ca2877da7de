/**
 * Node attestation end to end: a real swtpm through the native addon on the
 * agent side; SoftHSM CA, SQLite store and the Node API over gRPC + TLS on a
 * real TCP port on the server side. Then renewal over mTLS, SyncEntries,
 * SignX509Svids and SignJwtSvid, and drift out of policy.
 */
import { X509Certificate, createHash, generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { attestNode, buildCsr, renewAgentSvid, NodeApiClient, NodeApiError, type AgentSvid, type WireSyncEntries } from '../../src/agent/attestation/index.js';
import { parseSelector, serverIdOf } from '../../src/server/store/index.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { bundleFromX509Der, verifyX509Svid } from '../../src/spiffe/index.js';
import { objectName, parseTpmtPublic, unwrapEkCertificate } from '../../src/tpm/index.js';
import { HsmFixture, TD, snapshot, startServer, startTpm, type TestServer, type TestTpm } from './harness.js';

const run = promisify(execFile);
const toPem = (der: Buffer): string => new X509Certificate(der).toString();

let hsm: HsmFixture;
let tpm: TestTpm;
let server: TestServer;
let rsaSvid: AgentSvid;

/** The EK hash computed from the EK certificate by openssl: independent of keel's TPM parsing. */
async function ekHashByOpenssl(certNv: Buffer): Promise<string> {
  const pem = join(tpm.sim.dir, `ek-${Math.random()}.pem`);
  await writeFile(pem, toPem(unwrapEkCertificate(certNv)));
  const { stdout: pub } = await run('openssl', ['x509', '-in', pem, '-noout', '-pubkey']);
  const pubFile = `${pem}.pub`;
  await writeFile(pubFile, pub);
  const { stdout } = await run('sh', ['-c', `openssl pkey -pubin -in '${pubFile}' -outform DER | openssl dgst -sha256 -r`]);
  return stdout.split(' ')[0]!.trim();
}

const conn = () => ({ serverAddress: server.address, serverCaBundle: server.caPem, trustDomain: TD });

beforeAll(async () => {
  hsm = await HsmFixture.create();
  tpm = await startTpm();
  server = await startServer(hsm.hsm, { manufacturerCaPems: tpm.sim.manufacturerCaPems });
});
afterAll(async () => {
  await server?.close();
  await tpm?.close();
  await hsm?.close();
});

describe('attestation with swtpm and the swtpm-dev policy', () => {
  it('attests the RSA-2048 EK: agent SVID for the EK hash, node recorded with its selectors, audit line', async () => {
    rsaSvid = await attestNode({ device: tpm.device, ekKind: 'rsa-2048', agentKey: tpm.agentKey, ...conn() });
    const ekHash = await ekHashByOpenssl((await tpm.device.ekCertificate('rsa-2048'))!);
    expect(rsaSvid.spiffeId).toBe(`spiffe://${TD}/keel/agent/tpm/${ekHash}`);

    // The SVID verifies with the bundle (keel's verifier and openssl), for our key.
    const chain = rsaSvid.svidChain.map((d) => new X509Certificate(d));
    expect(verifyX509Svid(chain, bundleFromX509Der(TD, rsaSvid.bundle)).id.toString()).toBe(rsaSvid.spiffeId);
    await writeFile(join(tpm.sim.dir, 'ca.pem'), server.caPem);
    await writeFile(join(tpm.sim.dir, 'leaf.pem'), chain[0]!.toString());
    const v = await run('openssl', ['verify', '-CAfile', join(tpm.sim.dir, 'ca.pem'), join(tpm.sim.dir, 'leaf.pem')]);
    expect(v.stdout).toContain('OK');

    const caHash = createHash('sha256').update(new X509Certificate(tpm.sim.manufacturerCaPems[0]!).raw).digest('hex');
    expect([...rsaSvid.selectors].sort()).toEqual(
      [`tpm:ek-hash:${ekHash}`, `tpm:ek-ca:${caHash}`, 'tpm:policy:swtpm-dev', 'tpm:platform:swtpm'].sort(),
    );
    const node = await server.store.getNode(SpiffeId.parse(rsaSvid.spiffeId));
    expect(node?.status.kind).toBe('active');
    expect(node?.akName).toBe(objectName(parseTpmtPublic(rsaSvid.akBlobs!.public)).toString('hex'));
    expect(node?.status.kind === 'active' && node.status.svid.serial).toBe(chain[0]!.serialNumber.toLowerCase());
    const audit = server.takeAudit();
    expect(audit).toEqual([expect.objectContaining({ event: 'node.attested', agentId: rsaSvid.spiffeId, ekHash })]);
  });

  it('attests the ECC P-384 EK of the same TPM as another node', async () => {
    const svid = await attestNode({ device: tpm.device, ekKind: 'ecc-p384', agentKey: tpm.agentKey, ...conn() });
    const ekHash = await ekHashByOpenssl((await tpm.device.ekCertificate('ecc-p384'))!);
    expect(svid.spiffeId).toBe(`spiffe://${TD}/keel/agent/tpm/${ekHash}`);
    expect(svid.spiffeId).not.toBe(rsaSvid.spiffeId);
    expect((await server.nodes()).length).toBe(2);
    server.takeAudit();
  });

  it('admits an EK by its hash on the allow-list when no manufacturer CA is configured', async () => {
    const ekHash = rsaSvid.spiffeId.split('/').pop()!;
    const s2 = await startServer(hsm.hsm, { allowList: [ekHash] });
    try {
      const svid = await attestNode({ device: tpm.device, ekKind: 'rsa-2048', akBlobs: rsaSvid.akBlobs, agentKey: tpm.agentKey, serverAddress: s2.address, serverCaBundle: s2.caPem, trustDomain: TD });
      expect(svid.selectors).toContain(`tpm:ek-hash:${ekHash}`);
      expect(svid.selectors.some((s) => s.startsWith('tpm:ek-ca:'))).toBe(false);
    } finally {
      await s2.close();
    }
  });

  it('renews the agent SVID over mTLS with a fresh quote; the SVID it replaced cannot renew again', async () => {
    const before = await server.store.getNode(SpiffeId.parse(rsaSvid.spiffeId));
    const renewed = await renewAgentSvid({
      device: tpm.device,
      ekKind: 'rsa-2048',
      akBlobs: rsaSvid.akBlobs,
      svid: tpm.credential(rsaSvid.svidChain),
      agentKey: tpm.agentKey,
      ...conn(),
    });
    expect(renewed.spiffeId).toBe(rsaSvid.spiffeId);
    const leaf = new X509Certificate(renewed.svidChain[0]!);
    expect(leaf.serialNumber).not.toBe(new X509Certificate(rsaSvid.svidChain[0]!).serialNumber);
    const after = await server.store.getNode(SpiffeId.parse(rsaSvid.spiffeId));
    expect(after?.status.kind === 'active' && after.status.svid.serial).toBe(leaf.serialNumber.toLowerCase());
    expect(after!.lastQuote.clock >= before!.lastQuote.clock).toBe(true);
    expect(server.takeAudit().filter((e) => e.event !== 'node.connection_closed')).toEqual([expect.objectContaining({ event: 'node.renewed', agentId: rsaSvid.spiffeId })]);

    // The old SVID is still within its validity, but it was replaced: renewing with it is refused.
    const again = await renewAgentSvid({ device: tpm.device, ekKind: 'rsa-2048', akBlobs: rsaSvid.akBlobs, svid: tpm.credential(rsaSvid.svidChain), agentKey: tpm.agentKey, ...conn() }).catch((e) => e);
    expect(again).toBeInstanceOf(NodeApiError);
    // Refused at the channel binding, before any call: only the latest SVID of a node counts.
    expect((again as NodeApiError).reason).toBe('superseded');
    // (The renewal's own connection, still bound to the old SVID, may be closed by the server first: node.connection_closed.)
    expect(server.takeAudit().filter((e) => e.event !== 'node.connection_closed')).toEqual([expect.objectContaining({ event: 'node.connection_refused', reason: 'superseded' })]);
    rsaSvid = renewed;
  });

  it('renews the server SVID: new connections get the new certificate and still attest', async () => {
    const before = server.api.identity.notAfter;
    await new Promise((r) => setTimeout(r, 1100));
    await server.api.identity.renew();
    expect(server.api.identity.notAfter.getTime()).toBeGreaterThan(before.getTime());
    const s = await attestNode({ device: tpm.device, ekKind: 'rsa-2048', akBlobs: rsaSvid.akBlobs, agentKey: tpm.agentKey, ...conn() });
    expect(s.spiffeId).toBe(rsaSvid.spiffeId);
    rsaSvid = s;
    server.takeAudit();
  });
});

function agentClient(svid: AgentSvid = rsaSvid): NodeApiClient {
  return new NodeApiClient({
    address: server.address,
    serverCaBundle: server.caPem,
    trustDomain: TD,
    clientSvid: tpm.credential(svid.svidChain),
  });
}

describe('entries and SVIDs for an attested agent (mTLS)', () => {
  const td = TrustDomain.parse(TD);
  let mine: string;
  let viaGroup: string;
  let notMine: string;

  beforeAll(async () => {
    const agentId = SpiffeId.parse(rsaSvid.spiffeId);
    mine = (await server.store.createEntry({ spiffeId: td.child('/web'), parentId: agentId, selectors: [parseSelector('unix:uid:1000')], x509SvidTtl: 120, dnsNames: ['web.example.org'] })).id;
    const group = await server.store.createEntry({ spiffeId: td.child('/group/swtpm'), parentId: serverIdOf(td), selectors: [parseSelector('tpm:policy:swtpm-dev')] });
    viaGroup = (await server.store.createEntry({ spiffeId: td.child('/db'), parentId: group.spiffeId, selectors: [parseSelector('unix:uid:1001')] })).id;
    notMine = (await server.store.createEntry({ spiffeId: td.child('/other'), parentId: td.child('/keel/agent/tpm/' + '0'.repeat(64)), selectors: [parseSelector('unix:uid:1')] })).id;
  });

  it('SyncEntries streams the authorized entries and bundles at once, then again after a change', async () => {
    const client = agentClient();
    const updates: WireSyncEntries[] = [];
    const errors: unknown[] = [];
    const cancel = client.syncEntries((u) => updates.push(u), (e) => errors.push(e));
    try {
      await waitFor(() => updates.length >= 1);
      const ids = updates[0]!.entries.map((e) => e.id).sort();
      expect(ids).toEqual([mine, viaGroup].sort());
      expect(Object.keys(updates[0]!.x509_bundles)).toEqual([`spiffe://${TD}`]);
      expect(bundleFromX509Der(TD, updates[0]!.x509_bundles[`spiffe://${TD}`]!).x509Authorities.length).toBeGreaterThan(0);
      const added = await server.store.createEntry({ spiffeId: td.child('/late'), parentId: SpiffeId.parse(rsaSvid.spiffeId), selectors: [parseSelector('unix:uid:7')] });
      await waitFor(() => updates.some((u) => u.entries.some((e) => e.id === added.id)));
      expect(errors).toEqual([]);
    } finally {
      cancel();
      client.close();
    }
  });

  it('SignX509Svids signs authorized entries with the entry TTL and refuses the others per item, with audit lines', async () => {
    const client = agentClient();
    try {
      const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      const bad = buildCsr(key);
      bad[bad.length - 3]! ^= 0xff;
      server.takeAudit();
      const results = await client.signX509Svids([
        { entryId: mine, csr: buildCsr(key) },
        { entryId: viaGroup, csr: buildCsr(key) },
        { entryId: notMine, csr: buildCsr(key) },
        { entryId: mine, csr: bad },
      ]);
      expect(results.map((r) => r.error)).toEqual(['', '', 'not-authorized', 'csr-invalid']);
      const web = new X509Certificate(results[0]!.cert_chain[0]!);
      expect(web.subjectAltName).toContain(`URI:spiffe://${TD}/web`);
      expect(web.subjectAltName).toContain('DNS:web.example.org');
      const ttl = (new Date(web.validTo).getTime() - new Date(web.validFrom).getTime()) / 1000;
      expect(ttl).toBeGreaterThanOrEqual(120);
      expect(ttl).toBeLessThanOrEqual(131); // 120 s + the CA's backdating
      expect(new X509Certificate(results[1]!.cert_chain[0]!).subjectAltName).toContain(`URI:spiffe://${TD}/db`);
      const audit = server.takeAudit();
      expect(audit.filter((e) => e.event === 'svid.x509_issued')).toHaveLength(2);
      expect(audit.filter((e) => e.event === 'svid.refused').map((e) => (e as { reason: string }).reason).sort()).toEqual(['csr-invalid', 'not-authorized']);
    } finally {
      client.close();
    }
  });

  it('SignJwtSvid mints for an authorized entry (verified with the JWT bundle) and refuses another', async () => {
    const client = agentClient();
    try {
      const { token } = await client.signJwtSvid(mine, ['https://api.example.org']);
      const jwks = JSON.parse((await syncOnce(client)).jwt_bundles[`spiffe://${TD}`]!.toString()) as { keys: Record<string, unknown>[] };
      // jose only takes keys whose `use` is absent or "sig"; a SPIFFE bundle says "jwt-svid".
      const keys = jwks.keys.map(({ use: _use, ...k }) => k);
      const { payload } = await jwtVerify(token, createLocalJWKSet({ keys } as never), { audience: 'https://api.example.org' });
      expect(payload.sub).toBe(`spiffe://${TD}/web`);
      const refused = await client.signJwtSvid(notMine, ['x']).catch((e) => e);
      expect((refused as NodeApiError).reason).toBe('not-authorized');
      expect(server.takeAudit().map((e) => e.event)).toEqual(['svid.jwt_issued', 'svid.refused']);
    } finally {
      client.close();
    }
  });
});

describe('drift out of policy', () => {
  it('after a PCR extend the renewal is refused with the reason logged, and the node keeps only its current SVID until expiry', async () => {
    const before = await server.nodes();
    await tpm.device.pcrExtend(7, { sha256: createHash('sha256').update('unexpected bootloader').digest() });
    const refused = await renewAgentSvid({
      device: tpm.device,
      ekKind: 'rsa-2048',
      akBlobs: rsaSvid.akBlobs,
      svid: tpm.credential(rsaSvid.svidChain),
      agentKey: tpm.agentKey,
      ...conn(),
    }).catch((e) => e);
    expect(refused).toBeInstanceOf(NodeApiError);
    expect((refused as NodeApiError).reason).toBe('policy');
    const audit = server.takeAudit();
    expect(audit).toEqual([expect.objectContaining({ event: 'node.renewal_refused', agentId: rsaSvid.spiffeId, reason: 'policy' })]);
    expect((audit[0] as { detail: string }).detail).toMatch(/swtpm-dev: pcrs\.7/);
    expect(snapshot(await server.nodes())).toBe(snapshot(before));
  });

  it('a fresh attestation after the extend is refused too, and records nothing', async () => {
    const before = await server.nodes();
    const refused = await attestNode({ device: tpm.device, ekKind: 'ecc-p384', agentKey: tpm.agentKey, ...conn() }).catch((e) => e);
    expect((refused as NodeApiError).reason).toBe('policy');
    expect(server.takeAudit()).toEqual([expect.objectContaining({ event: 'node.attestation_refused', reason: 'policy' })]);
    expect(snapshot(await server.nodes())).toBe(snapshot(before));
  });
});

async function syncOnce(client: NodeApiClient): Promise<WireSyncEntries> {
  return new Promise((resolve, reject) => {
    const cancel = client.syncEntries(
      (u) => {
        cancel();
        resolve(u);
      },
      reject,
    );
  });
}

async function waitFor(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}
