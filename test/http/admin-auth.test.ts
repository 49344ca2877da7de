/**
 * Admin authentication on real sockets: mTLS over TCP with X.509-SVIDs made
 * by openssl, and the local Unix socket with its file modes.
 */
import { mkdirSync, mkdtempSync, rmSync, statSync, chmodSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log/index.js';
import { AdminSocketError, HttpApiConfigError, startHttpApi } from '../../src/server/http/index.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import {
  ADMIN_ID,
  makeTestPki,
  memorySigner,
  MutableBundle,
  startTestApi,
  tcpRequest,
  td,
  testBundle,
  unixRequest,
  WORKLOAD_ID,
  type RunningApi,
  type TestPki,
} from './helpers.js';

const entry = (spiffeId: string, extra: Record<string, unknown> = {}) => ({
  spiffeId,
  parentId: 'spiffe://example.org/keel/agent/tpm/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  selectors: ['unix:uid:1000'],
  ...extra,
});

let pki: TestPki;
let api: RunningApi;

beforeAll(async () => {
  pki = await makeTestPki();
  api = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [memorySigner('k1')])), tls: pki.server });
});
afterAll(async () => {
  await api?.stop();
  pki?.cleanup();
});

const mtls = (client: TestPki['adminSvid'] | undefined, path = '/v1/entries', method = 'GET', body?: unknown) =>
  tcpRequest({ port: api.port, path, method, body, ca: pki.webRoot.cert, ...(client ? { client } : {}) });

describe('admin API over TCP', () => {
  it('refuses a caller without a client certificate with 401', async () => {
    const r = await mtls(undefined);
    expect(r.status).toBe(401);
    expect(r.contentType).toMatch(/^application\/problem\+json/);
    expect(r.json()).toMatchObject({ type: 'urn:keel:problem:unauthenticated', status: 401, title: 'Authentication required' });
    expect(r.json().detail).toMatch(/no client certificate/);
    // The refusal is an audit line.
    const ev = api.audit.events.findLast((e) => e.event === 'admin.refused');
    expect(ev).toMatchObject({ event: 'admin.refused', status: 401, method: 'GET', path: '/v1/entries' });
  });

  it('refuses an SVID signed by a CA outside the bundle with 401', async () => {
    const r = await mtls(pki.foreignAdminSvid);
    expect(r.status).toBe(401);
    expect(r.json().detail).toMatch(/not an X\.509-SVID of example\.org/);
  });

  it('refuses a certificate of the right CA that is not an SVID with 401', async () => {
    const r = await mtls(pki.notAnSvid);
    expect(r.status).toBe(401);
    expect(r.json().detail).toMatch(/URI SAN/);
  });

  it('refuses a valid SVID that is not an admin with 403', async () => {
    const r = await mtls(pki.workloadSvid);
    expect(r.status).toBe(403);
    expect(r.json()).toMatchObject({ type: 'urn:keel:problem:forbidden', status: 403 });
    expect(r.json().detail).toContain(WORKLOAD_ID);
    // Not even a write goes through.
    const w = await mtls(pki.workloadSvid, '/v1/entries', 'POST', entry('spiffe://example.org/sneaky'));
    expect(w.status).toBe(403);
    expect(api.audit.events.findLast((e) => e.event === 'admin.refused')).toMatchObject({ status: 403, method: 'POST', reason: expect.stringContaining(WORKLOAD_ID) });
    const list = await unixRequest(api.socket, 'GET', '/v1/entries');
    expect(list.json().entries.map((e: { spiffeId: string }) => e.spiffeId)).not.toContain('spiffe://example.org/sneaky');
  });

  it('lets in an SVID whose SPIFFE ID has an admin entry, and audits its changes under that ID', async () => {
    expect((await mtls(pki.adminSvid)).status).toBe(403);
    const made = await unixRequest(api.socket, 'POST', '/v1/entries', entry(ADMIN_ID, { admin: true }));
    expect(made.status).toBe(201);

    const r = await mtls(pki.adminSvid);
    expect(r.status).toBe(200);
    expect(r.json().entries.some((e: { spiffeId: string; admin: boolean }) => e.spiffeId === ADMIN_ID && e.admin)).toBe(true);

    const created = await mtls(pki.adminSvid, '/v1/entries', 'POST', entry('spiffe://example.org/app/api'));
    expect(created.status).toBe(201);
    const ev = api.audit.events.find((e) => e.event === 'admin.change' && e.target === created.json().id);
    expect(ev).toMatchObject({ event: 'admin.change', actor: ADMIN_ID, action: 'entry.create' });

    // Taking the admin flag away takes the access away at the next request.
    const upd = await unixRequest(api.socket, 'PATCH', `/v1/entries/${made.json().id}`, { admin: false });
    expect(upd.status).toBe(200);
    expect((await mtls(pki.adminSvid)).status).toBe(403);
  });

  it('leaves the public routes open to callers without a certificate', async () => {
    const r = await mtls(undefined, '/live');
    expect(r.status).toBe(200);
  });
});

describe('configured admin IDs', () => {
  it('admit the listed SPIFFE ID without an entry', async () => {
    const other = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [])), tls: pki.server, extra: { adminIds: [ADMIN_ID] } });
    try {
      const r = await tcpRequest({ port: other.port, path: '/v1/agents', ca: pki.webRoot.cert, client: pki.adminSvid });
      expect(r.status).toBe(200);
      const w = await tcpRequest({ port: other.port, path: '/v1/agents', ca: pki.webRoot.cert, client: pki.workloadSvid });
      expect(w.status).toBe(403);
    } finally {
      await other.stop();
    }
  });
});

describe('plain HTTP listener', () => {
  it('serves public routes but never the admin API', async () => {
    const plain = await startTestApi({ bundles: new MutableBundle(testBundle(pki, [])), plaintext: true, extra: { adminIds: [ADMIN_ID] } });
    try {
      expect((await tcpRequest({ port: plain.port, path: '/live' })).status).toBe(200);
      const r = await tcpRequest({ port: plain.port, path: '/v1/entries' });
      expect(r.status).toBe(401);
      expect(r.json().detail).toMatch(/mutual TLS/);
    } finally {
      await plain.stop();
    }
  });

  it('is refused unless the operator allows it explicitly', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keel-http-'));
    const store = SqliteDatastore.open({ path: join(dir, 'k.db') });
    try {
      await expect(
        startHttpApi({
          store,
          bundles: new MutableBundle(testBundle(pki, [])),
          trustDomain: td,
          audit: { record: () => undefined },
          logger: silentLogger,
          listen: { public: { host: '127.0.0.1', port: 0 }, adminSocket: join(dir, 'a', 's.sock') },
        }),
      ).rejects.toThrow(HttpApiConfigError);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('admin socket', () => {
  it('is a 0600 socket in a 0700 directory, and the admin API works over it with the caller named', async () => {
    const st = statSync(api.socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(statSync(join(api.dir, 'admin')).mode & 0o777).toBe(0o700);

    const r = await unixRequest(api.socket, 'POST', '/v1/entries', entry('spiffe://example.org/app/local'));
    expect(r.status).toBe(201);
    const ev = api.audit.events.find((e) => e.event === 'admin.change' && e.target === r.json().id);
    expect(ev?.event).toBe('admin.change');
    const actor = ev && 'actor' in ev ? ev.actor : '';
    // With the native addon built the kernel names the uid; without it the actor is just "local".
    expect(actor === 'local' || actor === `local:uid=${process.getuid!()}`).toBe(true);
  });

  it('replaces a stale socket file, refuses a live one and a directory others can enter', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keel-http-'));
    const store = SqliteDatastore.open({ path: join(dir, 'k.db') });
    const base = { store, bundles: new MutableBundle(testBundle(pki, [])), trustDomain: td, audit: { record: () => undefined }, logger: silentLogger };
    try {
      mkdirSync(join(dir, 'a'), { mode: 0o700 });
      const path = join(dir, 'a', 's.sock');
      // A socket file nobody listens on: left by a server killed with SIGKILL.
      const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`]);
      await new Promise<void>((res, rej) => {
        child.stdout.once('data', () => res());
        child.once('error', rej);
      });
      child.kill('SIGKILL');
      await new Promise((res) => child.once('exit', res));
      expect(statSync(path).isSocket()).toBe(true);
      const h = await startHttpApi({ ...base, listen: { adminSocket: path } });
      try {
        expect((await unixRequest(path, 'GET', '/live')).status).toBe(200);
        // The same path while a server listens on it.
        await expect(startHttpApi({ ...base, listen: { adminSocket: path } })).rejects.toThrow(/another server is listening/);
      } finally {
        await h.close();
      }

      mkdirSync(join(dir, 'open'), { mode: 0o755 });
      chmodSync(join(dir, 'open'), 0o755);
      await expect(startHttpApi({ ...base, listen: { adminSocket: join(dir, 'open', 's.sock') } })).rejects.toThrow(AdminSocketError);
      await expect(startHttpApi({ ...base, listen: { adminSocket: 'relative.sock' } })).rejects.toThrow(/absolute/);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
