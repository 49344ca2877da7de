// Peer credentials of a real Unix socket, with the client in another process.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { PeerCredentialsError, peerCredentials, peerCredentialsOf, peerGroupsOf } from '../../src/os/peercred.js';

let dir: string;
let server: Server;
let sockPath: string;
const accepted: Socket[] = [];
let waiting: ((s: Socket) => void) | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'keel-peercred-'));
  sockPath = join(dir, 'agent.sock');
  // Half-open: a client that exits must not make Node close our side, so the
  // socket stays open to ask the kernel about after the peer is gone.
  server = createServer({ allowHalfOpen: true }, (s) => {
    accepted.push(s);
    waiting?.(s);
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
});
afterAll(async () => {
  for (const s of accepted) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

/** A child process that connects, prints its pid/uid/gid/groups, and stays connected until killed. */
function client(wrapper: string[] = []): { child: ChildProcess; info: Promise<{ pid: number; uid: number; gid: number; groups: number[] }>; conn: Promise<Socket> } {
  const conn = new Promise<Socket>((r) => (waiting = r));
  const code = `
    const s = require('node:net').connect(${JSON.stringify(sockPath)}, () => {
      process.stdout.write(JSON.stringify({ pid: process.pid, uid: process.getuid(), gid: process.getgid(), groups: process.getgroups() }) + '\\n');
    });
    setInterval(() => {}, 1000);`;
  const argv = [...wrapper, process.execPath, '-e', code];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  const info = new Promise<{ pid: number; uid: number; gid: number; groups: number[] }>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(JSON.parse(out));
    });
    child.once('exit', (c) => reject(new Error(`client exited ${c}`)));
  });
  return { child, info, conn };
}

it('reports the pid, uid and gid of the process at the other end', async () => {
  const c = client();
  try {
    const [sock, info] = await Promise.all([c.conn, c.info]);
    const cred = peerCredentialsOf(sock);
    expect(cred.pid).toBe(c.child.pid);
    expect(cred.pid).toBe(info.pid);
    expect(cred.pid).not.toBe(process.pid);
    expect(cred.uid).toBe(info.uid);
    expect(cred.uid).toBe(process.getuid!());
    expect(cred.gid).toBe(info.gid);
    // SO_PEERGROUPS gives the supplementary groups; Node's getgroups() adds the egid
    expect(new Set([...peerGroupsOf(sock), cred.gid])).toEqual(new Set([...info.groups, info.gid]));
  } finally {
    c.child.kill('SIGKILL');
  }
});

// Only root can start a client under another identity (setpriv from util-linux).
it.skipIf(process.getuid?.() !== 0 || !existsSync('/usr/bin/setpriv'))(
  'reports another user and its supplementary groups as the kernel sees them',
  async () => {
    await chmod(dir, 0o755);
    await chmod(sockPath, 0o777);
    const c = client(['/usr/bin/setpriv', '--reuid=65534', '--regid=65534', '--groups=4,27,1234']);
    try {
      const [sock, info] = await Promise.all([c.conn, c.info]);
      expect(info.uid).toBe(65534);
      const cred = peerCredentialsOf(sock);
      expect(cred).toEqual({ pid: info.pid, uid: 65534, gid: 65534 });
      expect(peerGroupsOf(sock).sort((a, b) => a - b)).toEqual([4, 27, 1234]);
    } finally {
      c.child.kill('SIGKILL');
    }
  },
);

it('keeps the credentials of the connection time after the client is gone', async () => {
  const c = client();
  const [sock] = await Promise.all([c.conn, c.info]);
  const pid = c.child.pid;
  await new Promise<void>((r) => {
    c.child.once('exit', () => r());
    c.child.kill('SIGKILL');
  });
  // the kernel keeps what it recorded at connect(); the socket is still open on our side
  expect(sock.destroyed).toBe(false);
  expect(peerCredentialsOf(sock).pid).toBe(pid);
  sock.destroy();
});

it('throws PeerCredentialsError for a socket without a descriptor, a non-socket fd, and a bad fd', async () => {
  const c = client();
  try {
    const [sock] = await Promise.all([c.conn, c.info]);
    sock.destroy();
    const e1 = (() => { try { peerCredentialsOf(sock); } catch (e) { return e; } })();
    expect(e1).toBeInstanceOf(PeerCredentialsError);
    expect((e1 as PeerCredentialsError).code).toBe('NO_FD');
  } finally {
    c.child.kill('SIGKILL');
  }
  const fd = openSync(join(dir, 'plain-file'), 'w');
  try {
    const e2 = (() => { try { peerCredentials(fd); } catch (e) { return e; } })();
    expect(e2).toBeInstanceOf(PeerCredentialsError);
    expect((e2 as PeerCredentialsError).code).toBe('ENOTSOCK');
  } finally {
    closeSync(fd);
  }
  expect(() => peerCredentials(-1)).toThrow(PeerCredentialsError);
  const e3 = (() => { try { peerCredentials(987654); } catch (e) { return e; } })();
  expect((e3 as PeerCredentialsError).code).toBe('EBADF');
});
