/**
 * The attack of issue 9: a process of uid 65534 connects, hands the
 * connection to a child, then exec's /usr/bin/sleep, hoping to be served the
 * identity of an entry that requires `unix:path:/usr/bin/sleep`. The caller
 * identity is bound to the image that made the connection, so it is refused.
 *
 * Real processes under uid 65534: python3 connects (a plain Unix socket),
 * forks, and its child exec's a node script that speaks gRPC (HTTP/2 from
 * node:http2, the proto's own serializers) over the inherited descriptor;
 * the python parent — the pid the kernel recorded for the connection — then
 * exec's sleep on SIGUSR1.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, type WorkloadApiServer, type WorkloadAuditEvent } from '../../src/agent/workload/index.js';
import { otherUidRuntime } from '../helpers/other-uid.js';
import { FakeIdentitySource } from './fake-source.js';
import { tmpSocketPath, until } from './client.js';

const NOBODY = 65534;
const NODE = realpathSync(process.execPath);
const PYTHON = realpathSync('/usr/bin/python3');
const SLEEP = realpathSync('/usr/bin/sleep');
const SLEEP_ID = 'spiffe://example.org/sleep';
const PYTHON_ID = 'spiffe://example.org/python';
const EXEC_REFUSAL = 'the calling process runs another executable than the one that opened the connection';

const runtime = otherUidRuntime();
afterAll(() => runtime.dispose());

/** Connects, forks the gRPC child onto the connection, and (on SIGUSR1) exec's sleep. */
const CONNECTOR_PY = `
import os, signal, socket, sys
sock_path, node, client, proto = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)
s.set_inheritable(True)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
if os.fork() == 0:
    os.execv(node, [node, client, str(s.fileno()), proto])
signal.sigwait([signal.SIGUSR1])
os.execv(${JSON.stringify(SLEEP)}, ['sleep', '600'])
`;

/** gRPC over an inherited descriptor; one command per stdin line, one JSON line per event on stdout. */
const GRPC_CHILD = `
const grpc = await import(${JSON.stringify(runtime.moduleUrl('@grpc/grpc-js/build/src/index.js'))});
const pl = await import(${JSON.stringify(runtime.moduleUrl('@grpc/proto-loader/build/src/index.js'))});
const http2 = await import('node:http2');
const net = await import('node:net');
const { createInterface } = await import('node:readline');
const [fd, protoPath] = process.argv.slice(2);
const svc = grpc.loadPackageDefinition(pl.loadSync(protoPath, { keepCase: true, defaults: true })).SpiffeWorkloadAPI.service;
const sock = new net.Socket({ fd: Number(fd), readable: true, writable: true });
const session = http2.connect('http://localhost', { createConnection: () => sock });
const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
function call(tag, method, req) {
  const def = svc[method];
  const body = def.requestSerialize(req);
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), body]);
  frame.writeUInt32BE(body.length, 1);
  const st = session.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/' + method, 'content-type': 'application/grpc', te: 'trailers', 'workload.spiffe.io': 'true' });
  st.end(frame);
  let buf = Buffer.alloc(0);
  let status;
  st.on('data', (c) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
      const m = def.responseDeserialize(buf.subarray(5, 5 + buf.readUInt32BE(1)));
      buf = buf.subarray(5 + buf.readUInt32BE(1));
      out({ tag, ids: m.svids.map((s) => s.spiffe_id) });
    }
  });
  const take = (h) => { if (h['grpc-status'] !== undefined) status = { code: Number(h['grpc-status']), details: decodeURIComponent(String(h['grpc-message'] ?? '')) }; };
  st.on('response', take);
  st.on('trailers', take);
  st.on('error', () => {});
  st.on('close', () => out({ tag, status: status ?? { code: -1, details: 'closed' } }));
}
createInterface({ input: process.stdin }).on('line', (cmd) => {
  if (cmd === 'watch') call('watch', 'FetchX509SVID', {});
  if (cmd === 'jwt') call('jwt', 'FetchJWTSVID', { audience: ['db'] });
});
out({ tag: 'ready' });
`;

interface Line {
  tag: string;
  ids?: string[];
  status?: { code: number; details: string };
}

/** The python connector (uid 65534) and the lines its gRPC child prints. */
class Attacker {
  readonly proc: ChildProcess;
  readonly lines: Line[] = [];
  readonly #rl: Interface;

  constructor(socketPath: string, scripts: string) {
    this.proc = spawn(PYTHON, [join(scripts, 'connector.py'), socketPath, NODE, join(scripts, 'grpc-child.mjs'), runtime.proto('workload.proto')], {
      uid: NOBODY,
      gid: NOBODY,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.#rl = createInterface({ input: this.proc.stdout! });
    this.#rl.on('line', (l) => this.lines.push(JSON.parse(l) as Line));
  }

  send(cmd: 'watch' | 'jwt'): void {
    this.proc.stdin!.write(`${cmd}\n`);
  }

  async next(tag: string, after: number): Promise<Line> {
    await until(() => this.lines.slice(after).some((l) => l.tag === tag), 10_000, `a "${tag}" line`);
    return this.lines.slice(after).find((l) => l.tag === tag)!;
  }

  get exe(): string {
    return readlinkSync(`/proc/${this.proc.pid}/exe`);
  }

  kill(): void {
    this.proc.kill('SIGKILL');
    this.#rl.close();
  }
}

describe('exec after connect', () => {
  const source = new FakeIdentitySource();
  const audit: WorkloadAuditEvent[] = [];
  const scripts = mkdtempSync(join(tmpdir(), 'keel-wl-exec-'));
  const attackers: Attacker[] = [];
  let socketPath: string;
  let server: WorkloadApiServer;

  beforeAll(async () => {
    chmodSync(scripts, 0o755);
    writeFileSync(join(scripts, 'connector.py'), CONNECTOR_PY, { mode: 0o644 });
    writeFileSync(join(scripts, 'grpc-child.mjs'), GRPC_CHILD, { mode: 0o644 });
    const uid = { type: 'unix', value: `uid:${NOBODY}` };
    source.setEntry({ entryId: 'sleep', spiffeId: SLEEP_ID, selectors: [uid, { type: 'unix', value: `path:${SLEEP}` }] });
    source.setEntry({ entryId: 'python', spiffeId: PYTHON_ID, selectors: [uid, { type: 'unix', value: `path:${PYTHON}` }] });
    socketPath = tmpSocketPath();
    server = await startWorkloadApiServer({ socketPath, source, audit: (e) => audit.push(e) });
  });
  afterEach(() => {
    for (const a of attackers.splice(0)) a.kill();
  });
  afterAll(async () => {
    await server?.stop();
    rmSync(scripts, { recursive: true, force: true });
  });

  async function connected(): Promise<Attacker> {
    const before = server.connectionsOf(NOBODY);
    const a = new Attacker(socketPath, scripts);
    attackers.push(a);
    await a.next('ready', 0);
    // The agent has accepted the connection, and with it recorded what the connecting process runs.
    await until(() => server.connectionsOf(NOBODY) === before + 1, 10_000, 'the connection to be accepted');
    expect(a.exe).toBe(PYTHON);
    return a;
  }

  it('control: without an exec, the child using the connection gets the identity of the process that opened it (python), on a stream and a unary call', async () => {
    const a = await connected();
    a.send('watch');
    expect((await a.next('watch', 0)).ids).toEqual([PYTHON_ID]);
    a.send('jwt');
    expect((await a.next('jwt', 0)).ids).toEqual([PYTHON_ID]);
  });

  it("the connecting process exec's /usr/bin/sleep: the open stream ends PermissionDenied without the rotated SVID, and new calls are refused — never the sleep entry's identity", async () => {
    const a = await connected();
    a.send('watch');
    expect((await a.next('watch', 0)).ids).toEqual([PYTHON_ID]);
    const seen = a.lines.length;
    a.proc.kill('SIGUSR1');
    await until(() => a.exe === SLEEP, 10_000, 'the connecting process to run sleep');
    // Same pid, same start time: a PID-reuse check alone would serve sleep's entry now.
    source.rotate('python');
    const ended = await a.next('watch', seen);
    expect(ended.status?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(ended.status?.details).toBe('the calling process is gone');

    const n = a.lines.length;
    a.send('watch');
    a.send('jwt');
    const watch = await a.next('watch', n);
    const jwt = await a.next('jwt', n);
    expect(watch.status).toEqual({ code: grpc.status.PERMISSION_DENIED, details: EXEC_REFUSAL });
    expect(jwt.status).toEqual({ code: grpc.status.PERMISSION_DENIED, details: EXEC_REFUSAL });
    expect(a.lines.flatMap((l) => l.ids ?? [])).not.toContain(SLEEP_ID);
    // Each refusal is an audit line naming the uid, the code and the exec.
    const refusals = audit.filter((e) => e.uid === NOBODY && e.outcome === 'refused' && /exec'd since/.test(e.reason ?? ''));
    expect(refusals.map((e) => e.rpc).sort()).toEqual(['FetchJWTSVID', 'FetchX509SVID']);
    for (const r of refusals) expect(r.code).toBe('PERMISSION_DENIED');
  });
});
