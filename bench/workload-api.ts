/**
 * Workload API latency and fan-out, over a real Unix socket.
 *
 * The server runs in this process; the clients (grpc-js, one channel = one
 * connection each) in a child process, so both sides do not share one event
 * loop. Each figure is set against a floor measured in the same run: grpc-js
 * on another Unix socket, fed the same way, answering the same RPCs with a
 * constant message of the same size, without attestation or identity lookup.
 *
 *   node --import tsx bench/workload-api.ts
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { startWorkloadApiServer, WorkloadAttestor, PROTO_LOADER_OPTIONS, workloadProtoPath } from '../src/agent/workload/index.js';
import { FakeIdentitySource } from '../test/workload/fake-source.js';
import { issueLeaf } from '../test/workload/certs.js';

type Rpc = 'x509' | 'jwt';
type ToClient =
  | { op: 'latency'; socket: string; rpc: Rpc; clients: number; perClient: number }
  | { op: 'open'; socket: string; clients: number }
  | { op: 'close' };
type FromClient = { op: 'latency'; samples: number[] } | { op: 'opened' } | { op: 'rotated'; at: number[] } | { op: 'closed' };

const now = (): number => performance.timeOrigin + performance.now();

/** One connection per client: grpc-js otherwise shares one among channels to the same target. */
const LOCAL = { 'grpc.use_local_subchannel_pool': 1 };

function loadService(): { ctor: new (t: string, c: grpc.ChannelCredentials, o?: object) => grpc.Client; def: grpc.ServiceDefinition } {
  const pkg = grpc.loadPackageDefinition(loadSync(workloadProtoPath(), PROTO_LOADER_OPTIONS));
  const ctor = pkg.SpiffeWorkloadAPI as unknown as new (t: string, c: grpc.ChannelCredentials, o?: object) => grpc.Client;
  return { ctor, def: (ctor as unknown as { service: grpc.ServiceDefinition }).service };
}

// ---------------------------------------------------------------- client process

type AnyClient = grpc.Client & Record<string, (...a: unknown[]) => grpc.ClientReadableStream<unknown> & grpc.ClientUnaryCall>;

async function clientProcess(): Promise<void> {
  const { ctor } = loadService();
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  let open: { clients: AnyClient[]; calls: grpc.ClientReadableStream<unknown>[] } | undefined;

  const once = (c: AnyClient, rpc: Rpc): Promise<void> =>
    new Promise((resolve, reject) => {
      if (rpc === 'jwt') {
        c.FetchJWTSVID!({ audience: ['bench'] }, md, (e: Error | null) => (e ? reject(e) : resolve()));
        return;
      }
      const call = c.FetchX509SVID!({}, md);
      call.once('data', () => {
        call.cancel();
        resolve();
      });
      call.once('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
    });

  process.on('disconnect', () => process.exit(0));
  process.on('message', async (m: ToClient) => {
    if (m.op === 'latency') {
      const clients = Array.from({ length: m.clients }, () => new ctor(`unix://${m.socket}`, grpc.credentials.createInsecure(), LOCAL) as AnyClient);
      await Promise.all(clients.map((c) => once(c, m.rpc))); // connect + warm
      const samples: number[] = [];
      await Promise.all(
        clients.map(async (c) => {
          for (let i = 0; i < m.perClient; i++) {
            const t0 = performance.now();
            await once(c, m.rpc);
            samples.push(performance.now() - t0);
          }
        }),
      );
      for (const c of clients) c.close();
      process.send!({ op: 'latency', samples } satisfies FromClient);
    } else if (m.op === 'open') {
      const clients = Array.from({ length: m.clients }, () => new ctor(`unix://${m.socket}`, grpc.credentials.createInsecure(), LOCAL) as AnyClient);
      const at: number[] = [];
      let first = 0;
      const calls = clients.map((c) => {
        const call = c.FetchX509SVID!({}, md);
        let n = 0;
        call.on('data', () => {
          n++;
          if (n === 1 && ++first === clients.length) process.send!({ op: 'opened' } satisfies FromClient);
          if (n === 2) {
            at.push(now());
            if (at.length === clients.length) process.send!({ op: 'rotated', at } satisfies FromClient);
          }
        });
        call.on('error', () => undefined);
        return call;
      });
      open = { clients, calls };
    } else if (m.op === 'close') {
      for (const c of open?.calls ?? []) c.cancel();
      for (const c of open?.clients ?? []) c.close();
      open = undefined;
      process.send!({ op: 'closed' } satisfies FromClient);
    }
  });
}

// ---------------------------------------------------------------- server side

function ask(child: ChildProcess, m: ToClient, want: FromClient['op']): Promise<FromClient> {
  return new Promise((resolve) => {
    const on = (r: FromClient): void => {
      if (r.op !== want) return;
      child.off('message', on);
      resolve(r);
    };
    child.on('message', on);
    child.send(m);
  });
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/**
 * The floor: grpc-js fed the same way (our own Unix listener, same backlog,
 * connections injected), answering with constant messages: no peer
 * credentials, no attestation, no identity lookup.
 */
async function startFloor(socket: string, x509: object, jwt: object): Promise<{ stop(): void }> {
  const { def } = loadService();
  const s = new grpc.Server();
  s.addService(def, {
    FetchX509SVID: (call: grpc.ServerWritableStream<unknown, unknown>) => call.write(x509),
    FetchJWTSVID: (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, jwt),
  });
  const injector = s.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const net = createServer((sock) => injector.injectConnection(sock));
  await new Promise<void>((resolve) => net.listen({ path: socket, backlog: 4096 }, () => resolve()));
  return {
    stop() {
      net.close();
      s.forceShutdown();
    },
  };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'keel-bench-wl-'));
  const source = new FakeIdentitySource();
  source.setEntry({ entryId: 'svc', spiffeId: 'spiffe://example.org/bench/svc', selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }] });
  const socket = join(dir, 'api.sock');
  const server = await startWorkloadApiServer({ socketPath: socket, source, audit: () => {} });

  // The floor answers with messages of the same size as keel's.
  const ident = source.identitiesFor([{ type: 'unix', value: `uid:${process.getuid!()}` }])[0]!;
  const bundles = source.bundles();
  const floorX509 = {
    svids: [{ spiffe_id: ident.spiffeId.toString(), x509_svid: Buffer.concat(ident.x509Svid.chainDer), x509_svid_key: ident.x509Svid.privateKeyPkcs8, bundle: bundles.own.x509Der, hint: '' }],
  };
  const floorJwt = { svids: [{ spiffe_id: ident.spiffeId.toString(), svid: (await source.fetchJwtSvid('svc', ['bench'])).token, hint: '' }] };
  const floorSocket = join(dir, 'floor.sock');
  const floor = await startFloor(floorSocket, floorX509, floorJwt);

  const child = fork(fileURLToPath(import.meta.url), ['--client'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  child.once('exit', (code) => {
    if (code !== 0 && code !== null) {
      console.error(`the client process failed (exit ${code})`);
      process.exit(1);
    }
  });

  const rows: string[] = [];
  for (const rpc of ['x509', 'jwt'] as const) {
    for (const [clients, perClient] of [
      [1, 400],
      [100, 10],
      [1000, 3],
    ] as const) {
      const k = (await ask(child, { op: 'latency', socket, rpc, clients, perClient }, 'latency')) as { samples: number[] };
      const f = (await ask(child, { op: 'latency', socket: floorSocket, rpc, clients, perClient }, 'latency')) as { samples: number[] };
      const name = rpc === 'x509' ? 'FetchX509SVID (first message)' : 'FetchJWTSVID';
      const [kp50, kp99, fp50, fp99] = [pct(k.samples, 50), pct(k.samples, 99), pct(f.samples, 50), pct(f.samples, 99)];
      rows.push(
        `| ${name} | ${clients} | ${k.samples.length} | ${kp50.toFixed(2)} | ${kp99.toFixed(2)} | ${fp50.toFixed(2)} | ${fp99.toFixed(2)} | ${(kp50 / fp50).toFixed(1)}× |`,
      );
    }
  }

  // Rotation fan-out to 1,000 open streams, each on its own connection.
  await ask(child, { op: 'open', socket, clients: 1000 }, 'opened');
  const heapWithStreams = process.memoryUsage().heapUsed;
  const leaf = issueLeaf(source.own.ca, 'spiffe://example.org/bench/svc');
  const got = new Promise<number[]>((resolve) => {
    const on = (m: FromClient): void => {
      if (m.op !== 'rotated') return;
      child.off('message', on);
      resolve(m.at);
    };
    child.on('message', on);
  });
  const t0 = now();
  source.rotate('svc', leaf);
  const at = await got;
  const fanout = { p50: pct(at, 50) - t0, last: Math.max(...at) - t0 };
  const openStreams = server.openStreams;
  await ask(child, { op: 'close' }, 'closed');
  const deadline = Date.now() + 10_000;
  while (server.openStreams > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  global.gc?.();
  const heapWithout = process.memoryUsage().heapUsed;

  // In-process costs: attestation of this process, and the size of one identity's answer.
  const attestor = new WorkloadAttestor({ wants: (k) => k !== 'unix:sha256' });
  const att: number[] = [];
  for (let i = 0; i < 300; i++) {
    const t = performance.now();
    await attestor.attestPid(process.pid, { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    att.push(performance.now() - t);
  }
  const { def } = loadService();
  const answerBytes = (def.FetchX509SVID!.responseSerialize as (v: object) => Buffer)(floorX509).length;

  console.log('Latency in ms, clients and floor in a separate process from the server; each client its own connection.\n');
  console.log('| RPC | clients | samples | keel p50 | keel p99 | floor p50 | floor p99 | p50 / floor |');
  console.log('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) console.log(r);
  console.log('');
  console.log('| measure | value |');
  console.log('| --- | ---: |');
  console.log(`| rotation → 1,000 open streams (${openStreams} open), median arrival | ${fanout.p50.toFixed(1)} ms |`);
  console.log(`| rotation → 1,000 open streams, last arrival | ${fanout.last.toFixed(1)} ms |`);
  console.log(`| workload attestation of one process (p50 / p99, no sha256) | ${pct(att, 50).toFixed(3)} / ${pct(att, 99).toFixed(3)} ms |`);
  console.log(`| cached answer per identity (serialized X509SVIDResponse, shared by all streams of the same selectors) | ${answerBytes} B |`);
  console.log(`| server heap per open stream (1,000 streams + connections, minus after close${global.gc ? '' : '; no --expose-gc, rough'}) | ${((heapWithStreams - heapWithout) / 1000 / 1024).toFixed(1)} KiB |`);

  child.kill();
  await server.stop(200);
  floor.stop();
  rmSync(dir, { recursive: true, force: true });
}

if (process.argv[2] === '--client') void clientProcess();
else await main();
