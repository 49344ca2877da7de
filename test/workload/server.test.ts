/** Every Workload API RPC end to end: a real Unix socket, grpc-js + proto-loader as the client, real certificates and JWTs. */
import { spawn } from 'node:child_process';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { mkdirSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, WorkloadApiStartError, type WorkloadApiServer, type WorkloadAuditEvent } from '../../src/agent/workload/index.js';
import { mintJwtSvid } from '../../src/spiffe/index.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { FakeIdentitySource } from './fake-source.js';
import { firstOf, header, statusOf, StreamReader, tmpSocketPath, unary, workloadClient, type BundlesResponse, type WorkloadClient, type X509SvidResponse } from './client.js';

const UID0 = [{ type: 'unix', value: 'uid:0' }];
const HEADER_MSG = 'security header missing from request';

describe('Workload API over a Unix socket', () => {
  const source = new FakeIdentitySource('example.org');
  const audit: WorkloadAuditEvent[] = [];
  let socketPath: string;
  let server: WorkloadApiServer;
  let client: WorkloadClient;

  beforeAll(async () => {
    source.addFederatedDomain('other.org');
    source.setEntry({ entryId: 'web', spiffeId: 'spiffe://example.org/web', selectors: UID0, hint: 'web', federatesWith: ['other.org'] });
    source.setEntry({ entryId: 'db', spiffeId: 'spiffe://example.org/db', selectors: [...UID0, { type: 'unix', value: 'gid:0' }], hint: 'db' });
    socketPath = tmpSocketPath();
    server = await startWorkloadApiServer({ socketPath, source, audit: (e) => audit.push(e) });
    client = workloadClient(socketPath);
  });
  afterAll(async () => {
    client?.close();
    await server?.stop();
  });

  it('creates the directory 0755 and a world-writable socket', () => {
    expect(statSync(dirname(socketPath)).mode & 0o777).toBe(0o755);
    const st = statSync(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o777);
  });

  it('FetchX509SVID: every identity of the caller, key matching certificate, chaining to the bundle, federated bundles', async () => {
    const res = await firstOf<X509SvidResponse>(client.FetchX509SVID({}, header()));
    const ids = res.svids.map((s) => s.spiffe_id).sort();
    expect(ids).toEqual(['spiffe://example.org/db', 'spiffe://example.org/web']);
    const ca = new X509Certificate(source.own.ca.certDer);
    for (const svid of res.svids) {
      const leaf = new X509Certificate(svid.x509_svid);
      expect(leaf.subjectAltName).toBe(`URI:${svid.spiffe_id}`);
      expect(leaf.verify(ca.publicKey)).toBe(true);
      const pub = createPublicKey(createPrivateKey({ key: svid.x509_svid_key, format: 'der', type: 'pkcs8' }));
      expect(pub.export({ format: 'der', type: 'spki' }).equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))).toBe(true);
      expect(svid.bundle.equals(source.own.ca.certDer)).toBe(true);
      expect(svid.hint).toBe(svid.spiffe_id.endsWith('/web') ? 'web' : 'db');
    }
    expect(Object.keys(res.federated_bundles)).toEqual(['spiffe://other.org']);
    expect(res.federated_bundles['spiffe://other.org']!.equals(source.federated.get('other.org')!.ca.certDer)).toBe(true);
    expect(res.crl).toEqual([]);
  });

  it('FetchX509Bundles and FetchJWTBundles: maps keyed spiffe://<td>, the own and the federated trust domain', async () => {
    const x = await firstOf<BundlesResponse>(client.FetchX509Bundles({}, header()));
    expect(Object.keys(x.bundles).sort()).toEqual(['spiffe://example.org', 'spiffe://other.org']);
    expect(x.bundles['spiffe://example.org']!.equals(source.own.ca.certDer)).toBe(true);
    const j = await firstOf<BundlesResponse>(client.FetchJWTBundles({}, header()));
    expect(Object.keys(j.bundles).sort()).toEqual(['spiffe://example.org', 'spiffe://other.org']);
    const jwks = JSON.parse(j.bundles['spiffe://example.org']!.toString('utf8'));
    expect(jwks.keys.map((k: { kid: string }) => k.kid)).toEqual([source.own.signer.keyId]);
  });

  it('FetchJWTSVID: a token per identity that jose verifies against the JWT bundle served', async () => {
    const res = await unary<{ svids: { spiffe_id: string; svid: string; hint: string }[] }>(client, 'FetchJWTSVID', { audience: ['svc-a', 'svc-b'] });
    expect(res.svids.map((s) => s.spiffe_id).sort()).toEqual(['spiffe://example.org/db', 'spiffe://example.org/web']);
    const j = await firstOf<BundlesResponse>(client.FetchJWTBundles({}, header()));
    // jose accepts only use "sig" (or none); SPIFFE bundles say "jwt-svid"
    const jwks = JSON.parse(j.bundles['spiffe://example.org']!.toString('utf8')) as { keys: Record<string, unknown>[] };
    const keys = createLocalJWKSet({ keys: jwks.keys.map(({ use: _use, ...k }) => k) } as Parameters<typeof createLocalJWKSet>[0]);
    for (const s of res.svids) {
      const { payload, protectedHeader } = await jwtVerify(s.svid, keys, { audience: 'svc-b' });
      expect(payload.sub).toBe(s.spiffe_id);
      expect(protectedHeader.kid).toBe(source.own.signer.keyId);
    }
  });

  it('FetchJWTSVID: audience required; spiffe_id must be one of the caller\'s identities', async () => {
    let e = await statusOf(unary(client, 'FetchJWTSVID', { audience: [] }));
    expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'audience must be specified']);
    e = await statusOf(unary(client, 'FetchJWTSVID', { audience: [''] }));
    expect(e.code).toBe(grpc.status.INVALID_ARGUMENT);
    const one = await unary<{ svids: { spiffe_id: string }[] }>(client, 'FetchJWTSVID', { audience: ['a'], spiffe_id: 'spiffe://example.org/db' });
    expect(one.svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/db']);
    e = await statusOf(unary(client, 'FetchJWTSVID', { audience: ['a'], spiffe_id: 'spiffe://example.org/admin' }));
    expect(e.code).toBe(grpc.status.PERMISSION_DENIED);
    e = await statusOf(unary(client, 'FetchJWTSVID', { audience: ['a'], spiffe_id: 'https://example.org/db' }));
    expect(e.code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('ValidateJWTSVID: the subject and the claims as a google.protobuf.Struct; refusals as InvalidArgument', async () => {
    const { svids } = await unary<{ svids: { svid: string }[] }>(client, 'FetchJWTSVID', { audience: ['svc'], spiffe_id: 'spiffe://example.org/web' });
    const token = svids[0]!.svid;
    type V = { spiffe_id: string; claims: { fields: Record<string, { stringValue?: string; numberValue?: number }> } };
    const v = await unary<V>(client, 'ValidateJWTSVID', { audience: 'svc', svid: token });
    expect(v.spiffe_id).toBe('spiffe://example.org/web');
    expect(v.claims.fields.sub?.stringValue).toBe('spiffe://example.org/web');
    expect(v.claims.fields.aud?.stringValue).toBe('svc');
    expect(v.claims.fields.exp?.numberValue).toBe(JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp);

    let e = await statusOf(unary(client, 'ValidateJWTSVID', { audience: 'other', svid: token }));
    expect(e.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(e.details).toMatch(/wrong-aud/);
    const [h, p, s] = token.split('.');
    e = await statusOf(unary(client, 'ValidateJWTSVID', { audience: 'svc', svid: `${h}.${p}.${s!.slice(0, -4)}AAAA` }));
    expect(e.details).toMatch(/bad-signature/);
    e = await statusOf(unary(client, 'ValidateJWTSVID', { audience: '', svid: token }));
    expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'audience must be specified']);
    e = await statusOf(unary(client, 'ValidateJWTSVID', { audience: 'svc', svid: '' }));
    expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'svid must be specified']);
  });

  it('FetchJWTSVID: more than 16 audiences, or an audience over 1024 characters, is InvalidArgument (the request is wrong, not the server); 16 are served', async () => {
    const aud = (n: number) => Array.from({ length: n }, (_, i) => `aud-${i}`);
    const ok = await unary<{ svids: { svid: string }[] }>(client, 'FetchJWTSVID', { audience: aud(16), spiffe_id: 'spiffe://example.org/web' });
    expect(JSON.parse(Buffer.from(ok.svids[0]!.svid.split('.')[1]!, 'base64url').toString()).aud).toHaveLength(16);
    const mints = source.jwtMints;
    let e = await statusOf(unary(client, 'FetchJWTSVID', { audience: aud(17) }));
    expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'at most 16 audiences, got 17']);
    e = await statusOf(unary(client, 'FetchJWTSVID', { audience: ['x'.repeat(1025)] }));
    expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, 'an audience is longer than 1024 characters']);
    // Refused before anything was minted.
    expect(source.jwtMints).toBe(mints);
  });

  it('ValidateJWTSVID: a validly signed token whose sub is the trust domain ID (no path) is InvalidArgument; the same token for a workload ID validates', async () => {
    const td = TrustDomain.parse('example.org');
    const mint = (sub: SpiffeId) => mintJwtSvid({ signer: source.own.signer, sub, aud: ['svc'], expiresAt: new Date(Date.now() + 300_000) });
    const good = await unary<{ spiffe_id: string }>(client, 'ValidateJWTSVID', { audience: 'svc', svid: await mint(td.child('/web')) });
    expect(good.spiffe_id).toBe('spiffe://example.org/web');
    const e = await statusOf(unary(client, 'ValidateJWTSVID', { audience: 'svc', svid: await mint(td.id()) }));
    expect(e.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(e.details).toBe('sub spiffe://example.org is a trust domain ID, not the SPIFFE ID of a workload');
    expect(audit.at(-1)).toMatchObject({ rpc: 'ValidateJWTSVID', outcome: 'refused', code: 'INVALID_ARGUMENT' });
  });

  it('the security header: missing, "false" or two values → InvalidArgument on every RPC', async () => {
    for (const md of [header(null), header('false'), header(['true', 'true']), header('TRUE')]) {
      const streams = [client.FetchX509SVID, client.FetchX509Bundles, client.FetchJWTBundles];
      for (const m of streams) {
        const e = await statusOf(firstOf(m.call(client, {}, md)));
        expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, HEADER_MSG]);
      }
      for (const [m, req] of [
        ['FetchJWTSVID', { audience: ['a'] }],
        ['ValidateJWTSVID', { audience: 'a', svid: 'x.y.z' }],
      ] as const) {
        const e = await statusOf(unary(client, m, req, md));
        expect([e.code, e.details]).toEqual([grpc.status.INVALID_ARGUMENT, HEADER_MSG]);
      }
    }
  });

  it('FetchWITSVID and FetchWITBundles are Unimplemented', async () => {
    for (const m of [client.FetchWITSVID, client.FetchWITBundles]) {
      const e = await statusOf(firstOf(m.call(client, {}, header())));
      expect(e.code).toBe(grpc.status.UNIMPLEMENTED);
    }
  });

  it('audits issued and refused identities with pid/uid and never a private key', () => {
    const issued = audit.filter((e) => e.outcome === 'issued' && e.rpc === 'FetchX509SVID');
    expect(issued.length).toBeGreaterThan(0);
    expect(issued[0]).toMatchObject({ pid: process.pid, uid: 0, gid: 0 });
    expect(audit.some((e) => e.outcome === 'refused' && e.code === 'INVALID_ARGUMENT')).toBe(true);
    const text = JSON.stringify(audit);
    const key = source.leafOf('web')!.privateKeyPkcs8;
    expect(text).not.toContain(key.toString('base64'));
    expect(text).not.toContain(key.toString('hex'));
  });
});

describe('a caller that matches no entry', () => {
  it('PermissionDenied "no identity issued" on SVIDs; bundles only with allowUnauthenticatedVerifiers', async () => {
    for (const allow of [false, true]) {
      const source = new FakeIdentitySource();
      source.setEntry({ entryId: 'x', spiffeId: 'spiffe://example.org/x', selectors: [{ type: 'unix', value: 'uid:4242' }] });
      const socketPath = tmpSocketPath();
      const server = await startWorkloadApiServer({ socketPath, source, allowUnauthenticatedVerifiers: allow, audit: () => {} });
      const client = workloadClient(socketPath);
      try {
        let e = await statusOf(firstOf(client.FetchX509SVID({}, header())));
        expect([e.code, e.details]).toEqual([grpc.status.PERMISSION_DENIED, 'no identity issued']);
        e = await statusOf(unary(client, 'FetchJWTSVID', { audience: ['a'] }));
        expect([e.code, e.details]).toEqual([grpc.status.PERMISSION_DENIED, 'no identity issued']);
        if (allow) {
          const b = await firstOf<BundlesResponse>(client.FetchX509Bundles({}, header()));
          expect(Object.keys(b.bundles)).toEqual(['spiffe://example.org']);
          const j = await firstOf<BundlesResponse>(client.FetchJWTBundles({}, header()));
          expect(Object.keys(j.bundles)).toEqual(['spiffe://example.org']);
        } else {
          for (const m of [client.FetchX509Bundles, client.FetchJWTBundles]) {
            e = await statusOf(firstOf(m.call(client, {}, header())));
            expect([e.code, e.details]).toEqual([grpc.status.PERMISSION_DENIED, 'no identity issued']);
          }
          e = await statusOf(unary(client, 'ValidateJWTSVID', { audience: 'a', svid: 'x.y.z' }));
          expect(e.code).toBe(grpc.status.PERMISSION_DENIED);
        }
      } finally {
        client.close();
        await server.stop();
      }
    }
  });
});

describe('socket life cycle', () => {
  it('refuses a path held by a live listener, replaces a stale socket file, refuses a non-socket file', async () => {
    const source = new FakeIdentitySource();
    const socketPath = tmpSocketPath();
    const a = await startWorkloadApiServer({ socketPath, source, audit: () => {} });
    const err = await startWorkloadApiServer({ socketPath, source, audit: () => {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkloadApiStartError);
    expect((err as WorkloadApiStartError).reason).toBe('socket-in-use');
    // the failed start left the running server's socket alone
    expect(existsSync(socketPath)).toBe(true);
    await a.stop();
    expect(existsSync(socketPath)).toBe(false);

    // a socket file whose listener died without cleaning up (SIGKILL)
    const stalePath = tmpSocketPath();
    mkdirSync(dirname(stalePath), { recursive: true });
    const holder = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stalePath)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => holder.stdout!.once('data', r));
    holder.kill('SIGKILL');
    await new Promise((r) => holder.once('exit', r));
    expect(statSync(stalePath).isSocket()).toBe(true);
    const b = await startWorkloadApiServer({ socketPath: stalePath, source, audit: () => {} });
    await b.stop();

    const filePath = tmpSocketPath();
    mkdirSync(dirname(filePath), { recursive: true });
    writeFileSync(filePath, 'not a socket');
    const err2 = await startWorkloadApiServer({ socketPath: filePath, source, audit: () => {} }).catch((e: unknown) => e);
    expect((err2 as WorkloadApiStartError).reason).toBe('bad-socket-path');
    expect(statSync(filePath).isFile()).toBe(true);
    expect(source.listenerCount).toBe(0);
  });

  it('stop ends open streams with Unavailable, closes connections and removes the socket', async () => {
    const source = new FakeIdentitySource();
    source.setEntry({ entryId: 'r', spiffeId: 'spiffe://example.org/r', selectors: UID0 });
    const socketPath = tmpSocketPath();
    const server = await startWorkloadApiServer({ socketPath, source, audit: () => {} });
    const client = workloadClient(socketPath);
    const r = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    await r.next();
    expect(server.openStreams).toBe(1);
    expect(source.listenerCount).toBe(1);
    await server.stop(500);
    const e = (await r.next().catch((x: unknown) => x)) as grpc.ServiceError;
    expect(e.code).toBe(grpc.status.UNAVAILABLE);
    expect(server.openStreams).toBe(0);
    expect(server.openConnections).toBe(0);
    expect(source.listenerCount).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
    client.close();
  });
});
