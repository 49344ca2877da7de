/**
 * The agent's own credential, attacked: copied to another machine, replayed
 * after the node re-attested, was evicted or banned; challenges flooded;
 * measurements drifting between renewals. Real swtpms, SoftHSM CA, SQLite,
 * the Node API over TLS on a TCP port.
 */
import { createHash, generateKeyPairSync } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import {
  NodeApiClient,
  NodeApiError,
  attestNode,
  buildCsr,
  checkNode,
  credentialOf,
  renewAgentSvid,
  type AgentCredential,
  type AgentSvid,
  type WireSyncEntries,
} from '../../src/agent/attestation/index.js';
import { parseSelector } from '../../src/server/store/index.js';
import { buildCsrWithSigner } from '../../src/spiffe/csr.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { TpmError } from '../../src/tpm/tpm-error.js';
import { HsmFixture, TD, startServer, startTpm, type TestServer, type TestTpm } from './harness.js';

let hsm: HsmFixture;
let A: TestTpm;
let B: TestTpm;
let server: TestServer;
const td = TrustDomain.parse(TD);

const conn = () => ({ serverAddress: server.address, serverCaBundle: server.caPem, trustDomain: TD });
const client = (cred?: AgentCredential): NodeApiClient =>
  new NodeApiClient({ address: server.address, serverCaBundle: server.caPem, trustDomain: TD, ...(cred ? { clientSvid: cred } : {}) });
const attestA = (): Promise<AgentSvid> => attestNode({ device: A.device, ekKind: 'rsa-2048', agentKey: A.agentKey, ...conn() });

let entryId: string;

beforeAll(async () => {
  hsm = await HsmFixture.create();
  [A, B] = await Promise.all([startTpm(), startTpm()]);
  server = await startServer(hsm.hsm, {
    manufacturerCaPems: [...A.sim.manufacturerCaPems, ...B.sim.manufacturerCaPems],
    stepTimeoutMs: 1500,
    nonceTtlSeconds: 1,
    pruneIntervalMs: 200,
    maxChallengesPerPeer: 16,
  });
});
afterAll(async () => {
  await server?.close();
  await A?.close();
  await B?.close();
  await hsm?.close();
});

async function syncOnce(c: NodeApiClient): Promise<WireSyncEntries> {
  return new Promise((resolve, reject) => {
    const cancel = c.syncEntries(
      (u) => {
        cancel();
        resolve(u);
      },
      reject,
    );
  });
}

/** Every RPC an agent SVID authenticates, each on a fresh connection bound to `cred`: the reasons refused. */
async function everyRpc(cred: AgentCredential): Promise<string[]> {
  const reasons: string[] = [];
  const reason = (e: unknown): string => (e instanceof NodeApiError ? e.reason : `not refused: ${String(e)}`);
  const run = async (f: (c: NodeApiClient) => Promise<unknown>): Promise<void> => {
    const c = client(cred);
    try {
      await f(c);
      reasons.push('accepted');
    } catch (e) {
      reasons.push(reason(e));
    } finally {
      c.close();
    }
  };
  await run((c) => syncOnce(c));
  await run((c) => c.signX509Svids([{ entryId, csr: buildCsr(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey) }]));
  await run((c) => c.signJwtSvid(entryId, ['aud']));
  await run((c) => checkNode({ exchange: (m, p, a) => c.exchange(m, p, a), device: A.device, ekKind: 'rsa-2048', akBlobs: akBlobs() }));
  // Last: an accepted renewal replaces the SVID.
  await run(() =>
    renewAgentSvid({ device: A.device, ekKind: 'rsa-2048', akBlobs: akBlobs(), svid: cred, agentKey: A.agentKey, ...conn() }),
  );
  return reasons;
}

let current: AgentSvid;
const akBlobs = () => current.akBlobs!;

describe('a copied agent credential', () => {
  it('works from the node that holds the TPM key', async () => {
    current = await attestA();
    entryId = (await server.store.createEntry({ spiffeId: td.child('/w'), parentId: SpiffeId.parse(current.spiffeId), selectors: [parseSelector('unix:uid:1')] })).id;
    expect(await everyRpc(A.credential(current.svidChain))).toEqual(['accepted', 'accepted', 'accepted', 'accepted', 'accepted']);
  });

  it('is refused from another machine: its SVID chain signed with the other TPM\'s agent key, audited', async () => {
    // Renewal above replaced the SVID: take the current one.
    current = await attestA();
    server.takeAudit();
    const thief = client(credentialOf(current.svidChain, B.key));
    try {
      const e = await syncOnce(thief).catch((x) => x);
      expect((e as NodeApiError).reason).toBe('unauthenticated');
      expect((e as NodeApiError).detail).toMatch(/signature does not verify/);
    } finally {
      thief.close();
    }
    expect(server.takeAudit()).toEqual([expect.objectContaining({ event: 'node.connection_refused', reason: 'unauthenticated' })]);
    // What data_dir holds of the key (its TPM-wrapped blobs) does not load in another TPM either.
    const blobs = await A.device.createAgentKey('rsa-2048');
    const loaded = await B.device.loadAgentKey('rsa-2048', blobs).catch((e: unknown) => e);
    expect(loaded).toBeInstanceOf(TpmError);
    expect((await B.device.loadedHandles()).transient).toEqual([]);
    // The real agent is unaffected.
    const real = client(A.credential(current.svidChain));
    try {
      expect((await syncOnce(real)).entries.map((e) => e.id)).toEqual([entryId]);
    } finally {
      real.close();
    }
  });
});

describe('one live credential per node', () => {
  it('after a new attestation, the earlier SVID is refused on every RPC, and a connection opened before is closed', async () => {
    const old = current;
    const open = client(A.credential(old.svidChain));
    const updates: WireSyncEntries[] = [];
    const ended = new Promise<NodeApiError>((resolve) => open.syncEntries((u) => updates.push(u), resolve));
    await waitFor(() => updates.length > 0);
    current = await attestA();
    const end = await ended;
    expect(['transport', 'superseded']).toContain(end.reason);
    const e = await open.signJwtSvid(entryId, ['aud']).catch((x) => x);
    expect((e as NodeApiError).reason).toBe('superseded');
    open.close();
    expect(await everyRpc(A.credential(old.svidChain))).toEqual(['superseded', 'superseded', 'superseded', 'superseded', 'superseded']);
    expect(server.takeAudit().some((a) => a.event === 'node.connection_closed' && a.reason === 'superseded')).toBe(true);
  });

  it('after a renewal the SVID it replaced is refused', async () => {
    const old = current;
    const renewed = await renewAgentSvid({ device: A.device, ekKind: 'rsa-2048', akBlobs: akBlobs(), svid: A.credential(old.svidChain), agentKey: A.agentKey, ...conn() });
    current = { ...renewed, akBlobs: old.akBlobs };
    expect(await everyRpc(A.credential(old.svidChain))).toEqual(['superseded', 'superseded', 'superseded', 'superseded', 'superseded']);
  });

  it('evict: refused at once (open connections closed); after re-attesting only the new SVID works', async () => {
    const beforeEvict = current;
    const open = client(A.credential(beforeEvict.svidChain));
    await syncOnce(open);
    const agentId = SpiffeId.parse(current.spiffeId);
    await server.store.evictNode(agentId);
    const e = await open.signJwtSvid(entryId, ['aud']).catch((x) => x);
    expect(['not-active', 'transport']).toContain((e as NodeApiError).reason);
    open.close();
    expect(await everyRpc(A.credential(beforeEvict.svidChain))).toEqual(['not-active', 'not-active', 'not-active', 'not-active', 'not-active']);
    current = await attestA();
    expect(await everyRpc(A.credential(beforeEvict.svidChain))).toEqual(['superseded', 'superseded', 'superseded', 'superseded', 'superseded']);
  });

  it('ban → unban → re-attest: SVIDs from before the ban stay refused', async () => {
    const beforeBan = current;
    const agentId = SpiffeId.parse(current.spiffeId);
    await server.store.banNode(agentId, 'stolen laptop');
    expect(await everyRpc(A.credential(beforeBan.svidChain))).toEqual(['not-active', 'not-active', 'not-active', 'not-active', 'not-active']);
    await server.store.unbanNode(agentId);
    current = await attestA();
    expect(await everyRpc(A.credential(beforeBan.svidChain))).toEqual(['superseded', 'superseded', 'superseded', 'superseded', 'superseded']);
    // The new one works, renewal included (which replaces it).
    expect(await everyRpc(A.credential(current.svidChain))).toEqual(['accepted', 'accepted', 'accepted', 'accepted', 'accepted']);
    current = await attestA();
  });
});

describe('attestation under pressure', () => {
  const nonceRows = (): number => {
    const db = new Database(server.dbPath, { readonly: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM nonces').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };

  it('1,000 unanswered challenges from one client: the excess refused with RESOURCE_EXHAUSTED, nothing left after the deadline, memory flat', async () => {
    await waitFor(() => nonceRows() === 0, 5000);
    // vitest.config.ts runs the workers with --expose-gc: without it heap figures measure uncollected garbage.
    expect(global.gc).toBeTypeOf('function');
    global.gc!();
    const heapBefore = process.memoryUsage().heapUsed;
    server.takeAudit();
    const c = client();
    const ek = await A.device.ekPublic('rsa-2048');
    const ekCert = (await A.device.ekCertificate('rsa-2048'))!;
    // A's genuine params: every begin succeeds and issues a challenge, up to the limit.
    const csr = await buildCsrWithSigner(A.key.publicKey, (d) => A.key.sign(d));
    let challenged = 0;
    const outcomes = await Promise.all(
      Array.from({ length: 1000 }, () =>
        c
          .exchange('Attest', { ek_public: ek, ek_certificate: ekCert, ak_public: akBlobs().public, csr, agent_key_public: A.agentKey.public }, () => {
            challenged++;
            // Never answered: the forger holds the challenge open.
            return new Promise(() => undefined);
          })
          .then(
            () => 'accepted',
            (e: NodeApiError) => `${e.reason}/${grpc.status[e.code]}`,
          ),
      ),
    );
    c.close();
    const counts = new Map<string, number>();
    for (const o of outcomes) counts.set(o, (counts.get(o) ?? 0) + 1);
    // At most 16 were ever challenged at once (the per-peer limit); every one of them ran out of time.
    expect(challenged).toBeGreaterThan(0);
    expect(challenged).toBeLessThanOrEqual(16);
    // Nothing was accepted; every refusal is the limit, or (on a loaded machine) a stream whose params came after the step timeout.
    expect(counts.get('accepted')).toBeUndefined();
    expect(counts.get('too-many-challenges/RESOURCE_EXHAUSTED')).toBeGreaterThan(0);
    expect([...counts.keys()].every((k) => k === 'too-many-challenges/RESOURCE_EXHAUSTED' || k.startsWith('malformed/') || k.startsWith('transport/'))).toBe(true);
    expect(server.api.pendingChallenges).toBe(0);
    expect(server.takeAudit().filter((a) => a.event === 'node.attestation_refused' && a.reason === 'too-many-challenges').length).toBe(counts.get('too-many-challenges/RESOURCE_EXHAUSTED'));
    // The nonces of the challenges that were issued expire (1 s) and are pruned (every 200 ms).
    await waitFor(() => nonceRows() === 0, 5000);
    global.gc?.();
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(30 * 1024 * 1024);
    // An honest node still attests.
    current = await attestA();
  });
});

describe('continuous attestation', () => {
  it('an unchanged node passes Check; a hash of a log the server never saw is answered eventlog-required', async () => {
    const c = client(A.credential(current.svidChain));
    try {
      server.takeAudit();
      const r = await checkNode({ exchange: (m, p, a) => c.exchange(m, p, a), device: A.device, ekKind: 'rsa-2048', akBlobs: akBlobs() });
      expect(r.eventLogSha256.length).toBe(0);
      expect(server.takeAudit()).toEqual([expect.objectContaining({ event: 'node.checked', agentId: current.spiffeId })]);
      const e = await c
        .exchange('Check', { ak_public: akBlobs().public }, async (ch) => {
          const { quoteForChallenge } = await import('../../src/agent/attestation/index.js');
          const ak = await A.device.loadAk('rsa-2048', akBlobs());
          try {
            return { ...(await quoteForChallenge(A.device, ak, akBlobs().public, ch)), event_log_sha256: createHash('sha256').update('a log').digest() };
          } finally {
            await A.device.flush(ak);
          }
        })
        .catch((x) => x);
      expect((e as NodeApiError).reason).toBe('eventlog-required');
      expect((e as NodeApiError).code).toBe(grpc.status.FAILED_PRECONDITION);
    } finally {
      c.close();
    }
  });

  it('after a PCR extend the node is marked drifted with the PCR named, its connections close, and nothing is signed', async () => {
    const c = client(A.credential(current.svidChain));
    const watcher = client(A.credential(current.svidChain));
    const updates: WireSyncEntries[] = [];
    const ended = new Promise<NodeApiError>((resolve) => watcher.syncEntries((u) => updates.push(u), resolve));
    await waitFor(() => updates.length > 0);
    server.takeAudit();
    await A.device.pcrExtend(7, { sha256: createHash('sha256').update('a bootloader nobody approved').digest() });
    try {
      const e = await checkNode({ exchange: (m, p, a) => c.exchange(m, p, a), device: A.device, ekKind: 'rsa-2048', akBlobs: akBlobs() }).catch((x) => x);
      expect((e as NodeApiError).reason).toBe('policy');
      const node = await server.store.getNode(SpiffeId.parse(current.spiffeId));
      expect(node?.status.kind).toBe('drifted');
      expect(node?.status.kind === 'drifted' && node.status.reason).toMatch(/pcrs\.7/);
      const audit = server.takeAudit();
      const drifted = audit.find((a) => a.event === 'node.drifted');
      expect(drifted).toMatchObject({ agentId: current.spiffeId, reason: 'policy' });
      expect((drifted as { detail: string }).detail).toMatch(/pcrs\.7/);
      // The open sync stream is ended by the server.
      await ended;
      expect(await everyRpc(A.credential(current.svidChain))).toEqual(['not-active', 'not-active', 'not-active', 'not-active', 'not-active']);
    } finally {
      c.close();
      watcher.close();
    }
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}
