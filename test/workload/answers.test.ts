/**
 * What each Workload API answer means (docs/agent.md, "Status codes"), over a
 * real Unix socket with grpc-js: PermissionDenied only when no entry matches
 * the caller (or the node lost its identity), Unavailable while the agent
 * cannot tell or its SVIDs are still being signed; JWT-SVIDs need only the
 * entry; the caller's deadline reaches the source.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, type WorkloadApiServer, type WorkloadAuditEvent } from '../../src/agent/workload/index.js';
import { FakeIdentitySource } from './fake-source.js';
import { header, statusOf, StreamReader, tmpSocketPath, unary, workloadClient, type BundlesResponse, type WorkloadClient, type X509SvidResponse } from './client.js';

const UID = process.getuid!();
const MINE = [{ type: 'unix', value: `uid:${UID}` }];
const NOT_MINE = [{ type: 'unix', value: `uid:${UID + 4242}` }];

describe('Workload API status codes', () => {
  let source: FakeIdentitySource;
  const audit: WorkloadAuditEvent[] = [];
  let server: WorkloadApiServer;
  let client: WorkloadClient;
  let socketPath: string;

  beforeAll(async () => {
    source = new FakeIdentitySource();
    socketPath = tmpSocketPath();
    server = await startWorkloadApiServer({ socketPath, source, audit: (e) => audit.push(e) });
    client = workloadClient(socketPath);
  });
  afterEach(() => {
    for (const id of ['mine', 'other', 'pending']) source.removeEntry(id);
    source.inSync = true;
    source.revoked = undefined;
    source.jwtFailure = undefined;
    source.touch();
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  const x509 = (): Promise<X509SvidResponse> => {
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    return r.next().finally(() => r.cancel());
  };
  const jwt = (aud = 'db', options: grpc.CallOptions = {}) => unary<{ svids: { spiffe_id: string; svid: string }[] }>(client, 'FetchJWTSVID', { audience: [aud] }, header(), options);

  it('in sync, no entry matches: PermissionDenied "no identity issued" on FetchX509SVID, FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID', async () => {
    source.setEntry({ entryId: 'other', spiffeId: 'spiffe://example.org/other', selectors: NOT_MINE });
    for (const e of [await statusOf(x509()), await statusOf(jwt())]) expect([e.code, e.details]).toEqual([grpc.status.PERMISSION_DENIED, 'no identity issued']);
    const b = new StreamReader<BundlesResponse>(client.FetchJWTBundles({}, header()));
    expect((await statusOf(b.next())).code).toBe(grpc.status.PERMISSION_DENIED);
    expect((await statusOf(unary(client, 'ValidateJWTSVID', { audience: 'db', svid: 'x.y.z' }))).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('not in sync with the server, no entry matches (yet): Unavailable, never PermissionDenied; once in sync, PermissionDenied', async () => {
    source.inSync = false;
    source.touch();
    const s = await statusOf(x509());
    const j = await statusOf(jwt());
    for (const e of [s, j]) expect([e.code, e.details]).toEqual([grpc.status.UNAVAILABLE, 'the agent is not ready to answer; retry']);
    expect(audit.filter((a) => a.code === 'UNAVAILABLE').at(-1)).toMatchObject({ outcome: 'refused', reason: 'not in sync with the server' });
    source.inSync = true;
    source.touch();
    expect((await statusOf(jwt())).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('not in sync, but an entry matches: served from what the agent holds', async () => {
    source.inSync = false;
    source.setEntry({ entryId: 'mine', spiffeId: 'spiffe://example.org/mine', selectors: MINE });
    expect((await x509()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/mine']);
    expect((await jwt()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/mine']);
  });

  it('an entry matches whose X.509-SVID is still being signed: FetchX509SVID Unavailable, FetchJWTSVID served, bundles served', async () => {
    source.setEntry({ entryId: 'pending', spiffeId: 'spiffe://example.org/pending', selectors: MINE }, null);
    const e = await statusOf(x509());
    expect([e.code, e.details]).toEqual([grpc.status.UNAVAILABLE, 'X.509-SVIDs are being issued; retry']);
    expect((await jwt()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/pending']);
    const b = new StreamReader<BundlesResponse>(client.FetchX509Bundles({}, header()));
    expect(Object.keys((await b.next()).bundles)).toEqual(['spiffe://example.org']);
    b.cancel();
    // Once it is signed, the same call succeeds.
    source.rotate('pending');
    expect((await x509()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/pending']);
  });

  it('the node lost its identity: PermissionDenied even though an entry matches', async () => {
    source.setEntry({ entryId: 'mine', spiffeId: 'spiffe://example.org/mine', selectors: MINE });
    source.revoked = 'drifted';
    source.touch(); // the SVID manager signals the revocation as a change
    for (const e of [await statusOf(x509()), await statusOf(jwt())]) expect([e.code, e.details]).toEqual([grpc.status.PERMISSION_DENIED, 'no identity issued']);
    expect(audit.at(-1)).toMatchObject({ code: 'PERMISSION_DENIED', reason: 'the node lost its identity (drifted)' });
  });

  it('no JWT-SVID could be minted (server away): Unavailable; the entry removed meanwhile: PermissionDenied', async () => {
    source.setEntry({ entryId: 'mine', spiffeId: 'spiffe://example.org/mine', selectors: MINE });
    source.jwtFailure = new Error('no JWT-SVID for spiffe://example.org/mine: transport (connection refused)');
    const e = await statusOf(jwt('fresh-1'));
    expect([e.code, e.details]).toEqual([grpc.status.UNAVAILABLE, 'could not fetch a JWT-SVID']);
    // The entry goes while the mint is out: the answer follows what the agent knows by then.
    const fail = source.jwtFailure;
    source.jwtFailure = undefined;
    const orig = source.fetchJwtSvid.bind(source);
    source.fetchJwtSvid = async () => {
      source.removeEntry('mine');
      throw fail;
    };
    try {
      const d = await statusOf(jwt('fresh-2'));
      expect([d.code, d.details]).toEqual([grpc.status.PERMISSION_DENIED, 'no identity issued']);
    } finally {
      source.fetchJwtSvid = orig;
    }
  });

  it("the caller's deadline reaches the source; without one, none is passed", async () => {
    source.setEntry({ entryId: 'mine', spiffeId: 'spiffe://example.org/mine', selectors: MINE });
    const deadline = Date.now() + 30_000;
    await jwt('with-deadline', { deadline });
    const passed = source.lastJwtOptions?.deadline;
    expect(typeof passed).toBe('number');
    // grpc-timeout travels as a duration: the server's deadline is the client's, give or take the transit.
    expect(Math.abs(passed! - deadline)).toBeLessThan(5000);
    await jwt('without-deadline');
    expect(source.lastJwtOptions).toEqual({});
  });
});
