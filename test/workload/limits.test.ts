/**
 * Connection and stream limits, over real Unix sockets and real gRPC:
 * per-uid and total connection limits answered RESOURCE_EXHAUSTED, root
 * exempt from the total, streams per uid, connections that never call closed
 * early, and a flood from an unprivileged uid that stays bounded in memory
 * while root is served and leaves nothing behind once it ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, type WorkloadApiLimits, type WorkloadApiServer, type WorkloadAuditEvent } from '../../src/agent/workload/index.js';
import { otherUidRuntime } from '../helpers/other-uid.js';
import { FakeIdentitySource } from './fake-source.js';
import { header, StreamReader, tmpSocketPath, until, workloadClient, type WorkloadClient, type X509SvidResponse } from './client.js';

const NODE = process.execPath;
const runtime = otherUidRuntime();
afterAll(() => runtime.dispose());

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** A grpc-js workload holding one FetchX509SVID stream open; prints the first answer as one JSON line. */
const HOLDER = `
const grpc = await import(${JSON.stringify(runtime.moduleUrl('@grpc/grpc-js/build/src/index.js'))});
const pl = await import(${JSON.stringify(runtime.moduleUrl('@grpc/proto-loader/build/src/index.js'))});
const [socketPath, protoPath] = process.argv.slice(2);
const pkg = grpc.loadPackageDefinition(pl.loadSync(protoPath, { keepCase: true, defaults: true }));
const client = new pkg.SpiffeWorkloadAPI('unix://' + socketPath, grpc.credentials.createInsecure());
const md = new grpc.Metadata(); md.set('workload.spiffe.io', 'true');
const call = client.FetchX509SVID({}, md);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
call.on('data', (m) => out({ ok: true, ids: m.svids.map((s) => s.spiffe_id) }));
call.on('error', (e) => out({ ok: false, code: e.code, details: e.details }));
setInterval(() => {}, 1000);
`;

/** Opens n connections that never send a byte and holds them; reports how many the agent closed. */
const FLOODER = `
const net = await import('node:net');
const [socketPath, nText] = process.argv.slice(2);
const n = Number(nText);
let connected = 0, closed = 0, failed = 0;
const held = [];
for (let i = 0; i < n; i++) {
  const s = net.connect(socketPath);
  s.on('connect', () => connected++);
  s.on('error', () => failed++);
  s.on('close', () => closed++);
  s.resume(); // read what the agent sends, so a close is seen
  held.push(s);
  if (i % 250 === 249) await new Promise((r) => setTimeout(r, 5));
}
setInterval(() => process.stdout.write(JSON.stringify({ connected, closed, failed }) + '\\n'), 100);
`;

interface Held {
  ok: boolean;
  ids?: string[];
  code?: number;
  details?: string;
}

describe('Workload API limits', () => {
  const source = new FakeIdentitySource();
  const scripts = mkdtempSync(join(tmpdir(), 'keel-wl-limits-'));
  const children: ChildProcess[] = [];
  const clients: WorkloadClient[] = [];

  function holder(socketPath: string, uid: number): Promise<Held> {
    const child = spawn(NODE, [join(scripts, 'holder.mjs'), socketPath, runtime.proto('workload.proto')], { uid, gid: uid, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    return new Promise((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', (l) => resolve(JSON.parse(l) as Held));
      child.once('exit', (c) => reject(new Error(`holder exited ${c}`)));
    });
  }

  /** A root client with its own connection and one open stream; resolves with the first answer or the refusal. */
  async function rootStream(socketPath: string): Promise<{ ids?: string[]; error?: grpc.ServiceError; reader: StreamReader<X509SvidResponse> }> {
    const c = workloadClient(socketPath);
    clients.push(c);
    const reader = new StreamReader<X509SvidResponse>(c.FetchX509SVID({}, header()));
    try {
      return { ids: (await reader.next()).svids.map((s) => s.spiffe_id), reader };
    } catch (e) {
      return { error: e as grpc.ServiceError, reader };
    }
  }

  /** A Workload API server on a fresh socket for `f`, stopped afterwards. */
  async function withServer(
    o: { audit?: (e: WorkloadAuditEvent) => void; limits?: Partial<WorkloadApiLimits> },
    f: (server: WorkloadApiServer, socketPath: string) => Promise<void>,
  ): Promise<void> {
    const socketPath = tmpSocketPath();
    const server = await startWorkloadApiServer({ socketPath, source, audit: o.audit ?? (() => undefined), ...(o.limits ? { limits: o.limits } : {}) });
    try {
      await f(server, socketPath);
    } finally {
      await server.stop();
    }
  }

  beforeAll(() => {
    chmodSync(scripts, 0o755);
    writeFileSync(join(scripts, 'holder.mjs'), HOLDER, { mode: 0o644 });
    writeFileSync(join(scripts, 'flooder.mjs'), FLOODER, { mode: 0o644 });
    for (const uid of [0, 65532, 65533, 65534]) {
      source.setEntry({ entryId: `u${uid}`, spiffeId: `spiffe://example.org/u${uid}`, selectors: [{ type: 'unix', value: `uid:${uid}` }] });
    }
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    for (const c of clients.splice(0)) c.close();
  });
  afterAll(() => rmSync(scripts, { recursive: true, force: true }));

  it('per-uid and total connection limits answer RESOURCE_EXHAUSTED; uid 0 is held to its per-uid limit but not to the total', async () => {
    const audit: WorkloadAuditEvent[] = [];
    await withServer({ audit: (e) => audit.push(e), limits: { maxConnectionsPerUid: 2, maxConnections: 2 } }, async (server, socketPath) => {
      expect((await rootStream(socketPath)).ids).toEqual(['spiffe://example.org/u0']);
      // Two other uids fill the total.
      expect(await holder(socketPath, 65534)).toEqual({ ok: true, ids: ['spiffe://example.org/u65534'] });
      expect(await holder(socketPath, 65533)).toEqual({ ok: true, ids: ['spiffe://example.org/u65533'] });
      // A third uid is over the total.
      expect(await holder(socketPath, 65532)).toEqual({ ok: false, code: grpc.status.RESOURCE_EXHAUSTED, details: 'too many connections' });
      expect(audit.find((e) => e.uid === 65532 && e.code === 'RESOURCE_EXHAUSTED')?.reason).toContain('the total limit');
      // Root is not counted in the total: its second connection is served…
      expect((await rootStream(socketPath)).ids).toEqual(['spiffe://example.org/u0']);
      // …its third is over its per-uid limit.
      const third = await rootStream(socketPath);
      expect(third.error?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(third.error?.details).toBe('too many connections');
      expect(audit.find((e) => e.uid === 0 && e.code === 'RESOURCE_EXHAUSTED')?.reason).toContain('per-uid limit');
      expect(server.connectionsOf(0)).toBe(2);
      // A connection refused over a limit is closed shortly after (REFUSING_GRACE_MS).
      await until(() => server.openConnections === 4, 5000, 'the refused connections to close');
    });
  });

  it('streams per uid: the stream over the limit is RESOURCE_EXHAUSTED, and a slot freed by a cancel is usable again', async () => {
    await withServer({ limits: { maxStreamsPerUid: 3 } }, async (server, socketPath) => {
      const c = workloadClient(socketPath);
      clients.push(c);
      const open = (): StreamReader<X509SvidResponse> => new StreamReader<X509SvidResponse>(c.FetchX509SVID({}, header()));
      const readers = [open(), open(), open()];
      for (const r of readers) expect((await r.next()).svids).toHaveLength(1);
      expect(server.streamsOf(0)).toBe(3);
      const fourth = open();
      const err = (await fourth.next().catch((e: unknown) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(err.details).toBe('too many streams');
      readers[0]!.cancel();
      await until(() => server.streamsOf(0) === 2, 5000, 'the cancelled stream to be released');
      const again = open();
      expect((await again.next()).svids).toHaveLength(1);
      for (const r of [...readers, again]) r.cancel();
      await until(() => server.streamsOf(0) === 0, 5000, 'every stream to be released');
    });
  });

  it('a connection that never calls is closed after the first-call timeout; one that calls is kept', async () => {
    await withServer({ limits: { firstCallTimeoutMs: 300 } }, async (server, socketPath) => {
      const silent = connect(socketPath);
      const closedAt = new Promise<number>((r) => silent.once('close', () => r(Date.now())));
      silent.on('error', () => undefined);
      // Read (and drop) the server's SETTINGS: 'close' comes only once the buffered data is consumed.
      silent.resume();
      const start = Date.now();
      const { ids, reader } = await rootStream(socketPath);
      expect(ids).toEqual(['spiffe://example.org/u0']);
      expect((await closedAt) - start).toBeGreaterThanOrEqual(250);
      await new Promise((r) => setTimeout(r, 500));
      // The calling connection is still open and still served.
      expect(server.openConnections).toBe(1);
      source.rotate('u0');
      expect((await reader.next()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/u0']);
      reader.cancel();
    });
  });

  it('a flood of 5,000 idle connections from uid 65534: bounded, memory flat, root served throughout; afterwards back to baseline', async () => {
    await withServer({}, async (server, socketPath) => {
      // Warm up the paths a served connection takes, then take the baseline.
      const warm = await rootStream(socketPath);
      expect(warm.ids).toEqual(['spiffe://example.org/u0']);
      gc();
      const base = process.memoryUsage();

      const flood = spawn(NODE, [join(scripts, 'flooder.mjs'), socketPath, '5000'], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(flood);
      let last = { connected: 0, closed: 0, failed: 0 };
      createInterface({ input: flood.stdout! }).on('line', (l) => (last = JSON.parse(l) as typeof last));
      let peak = 0;
      await until(
        () => {
          peak = Math.max(peak, server.openConnections);
          // Every connection beyond the uid's 256 closed by the agent (at accept or after the refusal grace).
          return last.connected + last.failed >= 5000 && last.closed >= last.connected - 256 && server.connectionsOf(65534) === 256;
        },
        60_000,
        'the flood to be accepted',
      );
      // Bounded: 256 served for the uid, at most 64 being refused, root's one.
      expect(server.connectionsOf(65534)).toBe(256);
      expect(peak).toBeLessThanOrEqual(256 + 64 + 1);
      expect(last.connected - last.closed).toBe(256);

      // Root, on a new connection, is served during the flood.
      const during = await rootStream(socketPath);
      expect(during.ids).toEqual(['spiffe://example.org/u0']);
      gc();
      const mid = process.memoryUsage();
      expect(mid.heapUsed).toBeLessThan(base.heapUsed + 50 * 2 ** 20);
      expect(mid.rss).toBeLessThan(base.rss + 50 * 2 ** 20);

      flood.kill('SIGKILL');
      await until(() => server.connectionsOf(65534) === 0 && server.openConnections === 2, 10_000, 'the flood connections to close');
      for (let i = 0; i < 3; i++) {
        await new Promise((r) => setTimeout(r, 50));
        gc();
      }
      expect(process.memoryUsage().heapUsed).toBeLessThan(base.heapUsed + 10 * 2 ** 20);
      warm.reader.cancel();
      during.reader.cancel();
    });
  }, 120_000);
});
