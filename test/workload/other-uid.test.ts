/**
 * Identity comes from the connection: clients spawned under other uids,
 * connections opened by one process and used by another, and processes that
 * are gone by the time the answer is ready.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, workloadProtoPath, type WorkloadApiServer, type WorkloadAuditEvent } from '../../src/agent/workload/index.js';
import { otherUidRuntime } from '../helpers/other-uid.js';
import { formatSelector } from '../../src/agent/workload/selectors.js';
import { FakeIdentitySource } from './fake-source.js';
import { header, StreamReader, tmpSocketPath, unary, workloadClient, type X509SvidResponse } from './client.js';
import { rawCall, sessionOver } from './raw-grpc.js';

const NODE = realpathSync(process.execPath);
const NODE_SHA256 = execFileSync('sha256sum', [NODE], { encoding: 'utf8' }).split(' ')[0]!;
// Copied to a world-readable place when the checkout is not (see test/helpers/other-uid.ts).
const runtime = otherUidRuntime();
afterAll(() => runtime.dispose());
const modUrl = (p: string) => runtime.moduleUrl(p);

/** A grpc-js workload, plain ESM so that any uid can run it with node alone. */
const CLIENT_SCRIPT = `
const grpc = await import(${JSON.stringify(modUrl('@grpc/grpc-js/build/src/index.js'))});
const pl = await import(${JSON.stringify(modUrl('@grpc/proto-loader/build/src/index.js'))});
const [socketPath, mode, protoPath] = process.argv.slice(2);
const pkg = grpc.loadPackageDefinition(pl.loadSync(protoPath, { keepCase: true, defaults: true }));
const client = new pkg.SpiffeWorkloadAPI('unix://' + socketPath, grpc.credentials.createInsecure());
const md = new grpc.Metadata(); md.set('workload.spiffe.io', 'true');
const print = (o) => { process.stdout.write(JSON.stringify(o)); client.close(); };
if (mode === 'x509') {
  const call = client.FetchX509SVID({}, md);
  call.once('data', (m) => { print({ ok: true, ids: m.svids.map((s) => s.spiffe_id) }); call.cancel(); });
  call.once('error', (e) => { if (e.code !== grpc.status.CANCELLED) print({ ok: false, code: e.code, details: e.details }); });
} else {
  client.FetchJWTSVID({ audience: ['x'] }, md, (e, r) => print(e ? { ok: false, code: e.code, details: e.details } : { ok: true, ids: r.svids.map((s) => s.spiffe_id) }));
}
`;

/** Connects, hands the connected socket to the parent over IPC, then exits at once ("exit") or waits to be killed ("stay"). */
const HANDOFF_SCRIPT = `
import net from 'node:net';
const [socketPath, mode] = process.argv.slice(2);
const s = net.connect(socketPath, () => {
  process.send('socket', s, {}, () => { if (mode === 'exit') process.exit(0); });
});
setInterval(() => {}, 1000);
`;

interface ClientResult {
  ok: boolean;
  ids?: string[];
  code?: number;
  details?: string;
}

describe('caller identity per connection, across uids and processes', () => {
  const source = new FakeIdentitySource();
  const audit: WorkloadAuditEvent[] = [];
  const children: ChildProcess[] = [];
  const scripts = mkdtempSync(join(tmpdir(), 'keel-wl-scripts-'));
  let socketPath: string;
  let server: WorkloadApiServer;

  function runClient(uid: number, mode: 'x509' | 'jwt'): Promise<ClientResult> {
    const child = spawn(NODE, [join(scripts, 'client.mjs'), socketPath, mode, runtime.proto('workload.proto')], { uid, gid: uid, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    return new Promise((resolve, reject) =>
      child.once('exit', (code) => (out ? resolve(JSON.parse(out) as ClientResult) : reject(new Error(`client exited ${code}: ${err}`)))),
    );
  }

  /** A process running as `uid` connects; its connection is returned to us, the child stays alive until killed. */
  async function handoff(uid: number, mode: 'exit' | 'stay'): Promise<{ socket: Socket; child: ChildProcess }> {
    const child = spawn(NODE, [join(scripts, 'handoff.mjs'), socketPath, mode], { uid, gid: uid, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(child);
    const socket = await new Promise<Socket>((resolve, reject) => {
      child.once('message', (_m, handle) => resolve(handle as Socket));
      child.once('exit', (c) => reject(new Error(`handoff child exited ${c} before sending`)));
    });
    if (mode === 'exit') await exited(child);
    return { socket, child };
  }

  const exited = (c: ChildProcess): Promise<void> => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));

  beforeAll(async () => {
    chmodSync(scripts, 0o755);
    writeFileSync(join(scripts, 'client.mjs'), CLIENT_SCRIPT, { mode: 0o644 });
    writeFileSync(join(scripts, 'handoff.mjs'), HANDOFF_SCRIPT, { mode: 0o644 });
    source.setEntry({ entryId: 'root', spiffeId: 'spiffe://example.org/root', selectors: [{ type: 'unix', value: 'uid:0' }] });
    source.setEntry({
      entryId: 'nobody',
      spiffeId: 'spiffe://example.org/nobody',
      selectors: [
        { type: 'unix', value: 'uid:65534' },
        { type: 'unix', value: 'gid:65534' },
        { type: 'unix', value: `path:${NODE}` },
        { type: 'unix', value: `sha256:${NODE_SHA256}` },
      ],
    });
    socketPath = tmpSocketPath();
    server = await startWorkloadApiServer({ socketPath, source, audit: (e) => audit.push(e) });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await server?.stop();
    rmSync(scripts, { recursive: true, force: true });
  });

  it('a grpc-js client under an unregistered uid gets PermissionDenied while root, connected at the same time, keeps its identity', async () => {
    const client = workloadClient(socketPath);
    const mine = new StreamReader<X509SvidResponse>(client.FetchX509SVID({}, header()));
    expect((await mine.next()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/root']);
    const [x509, jwt] = await Promise.all([runClient(65533, 'x509'), runClient(65533, 'jwt')]);
    expect(x509).toEqual({ ok: false, code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' });
    expect(jwt).toEqual({ ok: false, code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' });
    const refused = audit.filter((e) => e.uid === 65533 && e.outcome === 'refused');
    expect(refused.length).toBeGreaterThanOrEqual(2);
    expect(refused[0]!.selectors).toEqual(expect.arrayContaining(['unix:uid:65533', 'unix:gid:65533', `unix:path:${NODE}`]));
    // root's stream, on its own connection, still gets root's rotation
    source.rotate('root');
    expect((await mine.next()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/root']);
    mine.cancel();
    client.close();
  });

  it('a registered uid gets exactly its identity; the selectors are its real uid, gid, executable path and SHA-256', async () => {
    source.seenSelectors.length = 0;
    const [x509, jwt] = await Promise.all([runClient(65534, 'x509'), runClient(65534, 'jwt')]);
    expect(x509).toEqual({ ok: true, ids: ['spiffe://example.org/nobody'] });
    expect(jwt).toEqual({ ok: true, ids: ['spiffe://example.org/nobody'] });
    const seen = source.seenSelectors.map((set) => set.map(formatSelector)).find((set) => set.includes('unix:uid:65534'))!;
    expect(seen).toEqual(
      expect.arrayContaining(['unix:uid:65534', 'unix:gid:65534', 'unix:user:nobody', 'unix:group:nogroup', `unix:path:${NODE}`, `unix:sha256:${NODE_SHA256}`]),
    );
    expect(seen).not.toContain('unix:uid:0');
  });

  it('a connection opened by a process that has exited before the call: Unavailable, nothing sent', async () => {
    const { socket } = await handoff(65534, 'exit');
    const session = sessionOver(socket);
    const call = rawCall<X509SvidResponse>(session, 'FetchX509SVID', {});
    const status = await call.done;
    expect(status.code).toBe(grpc.status.UNAVAILABLE);
    expect(call.messages).toEqual([]);
    expect(audit.at(-1)).toMatchObject({ rpc: 'FetchX509SVID', outcome: 'refused', uid: 65534, code: 'UNAVAILABLE' });
    expect(audit.at(-1)!.reason).toMatch(/exited/);
    session.destroy();
  });

  it('the connection of a live uid-65534 process serves that identity even when root uses it; once the process dies the stream ends without the rotated SVID', async () => {
    const { socket, child } = await handoff(65534, 'stay');
    const session = sessionOver(socket);
    // we are root, but the connection was opened by uid 65534: the answer is 65534's
    const call = rawCall<X509SvidResponse>(session, 'FetchX509SVID', {});
    await call.waitFor(1);
    expect(call.messages[0]!.svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/nobody']);
    child.kill('SIGKILL');
    await exited(child);
    source.rotate('nobody');
    const status = await call.done;
    expect(status.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(call.messages).toHaveLength(1);
    expect(audit.at(-1)).toMatchObject({ rpc: 'FetchX509SVID', outcome: 'refused', code: 'PERMISSION_DENIED' });
    session.destroy();
  });

  it('FetchJWTSVID: the process exits after attestation, while the token is being fetched: PermissionDenied, no token', async () => {
    const { socket, child } = await handoff(65534, 'stay');
    const session = sessionOver(socket);
    const mintsBefore = source.jwtMints;
    source.beforeJwtReturn = async () => {
      child.kill('SIGKILL');
      await exited(child);
    };
    try {
      const call = rawCall<{ svids: unknown[] }>(session, 'FetchJWTSVID', { audience: ['pid-reuse'] });
      const status = await call.done;
      expect(status.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(status.details).toBe('the calling process is gone');
      expect(call.messages).toEqual([]);
      // the token was minted, and withheld
      expect(source.jwtMints).toBe(mintsBefore + 1);
      expect(audit.at(-1)!.reason).toMatch(/exited, was reused/);
    } finally {
      source.beforeJwtReturn = undefined;
      session.destroy();
    }
  });

  it('the raw client speaks the same protocol: the header rule holds on a handed-over connection too', async () => {
    const { socket, child } = await handoff(65534, 'stay');
    const session = sessionOver(socket);
    const call = rawCall(session, 'FetchX509SVID', {}, null);
    expect(await call.done).toEqual({ code: grpc.status.INVALID_ARGUMENT, details: 'security header missing from request' });
    session.destroy();
    child.kill('SIGKILL');
  });
});
