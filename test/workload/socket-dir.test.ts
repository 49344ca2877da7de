/**
 * The Workload API socket's directory chain: an unprivileged user who made
 * (or can write) a directory on the way to the socket could rename the
 * agent's socket and serve their own, so the agent refuses to start there.
 * Real directories, real owners (the attacker's directories are made by a
 * process running as uid 65534), a real listener.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startWorkloadApiServer, WorkloadApiStartError } from '../../src/agent/workload/index.js';
import { ensureSafeSocketDirectory, UnsafeSocketDirectoryError } from '../../src/os/socket-dir.js';
import { FakeIdentitySource } from './fake-source.js';
import { header, StreamReader, workloadClient } from './client.js';

const ATTACKER = 65534;
const source = new FakeIdentitySource();
let base: string;

/** A fresh directory of ours (0755) under the test base. */
function fresh(name: string): string {
  const d = join(base, name);
  mkdirSync(d, { mode: 0o755 });
  chmodSync(d, 0o755);
  return d;
}

/** Starts the server at `socketPath` expecting a refusal, and returns it. */
async function refusal(socketPath: string): Promise<WorkloadApiStartError> {
  const e = await startWorkloadApiServer({ socketPath, source, audit: () => undefined }).then(
    async (s) => {
      await s.stop();
      throw new Error('the server started');
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(WorkloadApiStartError);
  return e as WorkloadApiStartError;
}

beforeAll(() => {
  source.setEntry({ entryId: 'root', spiffeId: 'spiffe://example.org/root', selectors: [{ type: 'unix', value: 'uid:0' }] });
  base = mkdtempSync(join(tmpdir(), 'keel-sockdir-'));
  chmodSync(base, 0o755);
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('the socket directory chain', () => {
  it('an unprivileged user pre-creates the directories (777) in a sticky world-writable dir: the agent refuses, naming the first of them, and creates nothing', async () => {
    const tmp = fresh('tmp');
    chmodSync(tmp, 0o1777); // like /tmp
    // The attack as issue 9 ran it: the attacker, not root, makes the directories.
    execFileSync('mkdir', ['-p', '-m', '777', join(tmp, 'keel-agent', 'public')], { uid: ATTACKER, gid: ATTACKER });
    expect(statSync(join(tmp, 'keel-agent')).uid).toBe(ATTACKER);
    const e = await refusal(join(tmp, 'keel-agent', 'public', 'api.sock'));
    expect(e.reason).toBe('unsafe-socket-directory');
    expect(e.directory).toBe(join(tmp, 'keel-agent'));
    expect(e.message).toContain(`owned by uid ${ATTACKER}`);
    expect(readdirSync(join(tmp, 'keel-agent', 'public'))).toEqual([]);
  });

  it('the same path made by us under the sticky dir is accepted (the /tmp case), and missing directories are made 0755 whatever the umask', async () => {
    const tmp = fresh('tmp-ok');
    chmodSync(tmp, 0o1777);
    const socketPath = join(tmp, 'keel-agent', 'public', 'api.sock');
    const umask = process.umask(0o077);
    let server;
    try {
      server = await startWorkloadApiServer({ socketPath, source, audit: () => undefined });
    } finally {
      process.umask(umask);
    }
    try {
      expect(statSync(join(tmp, 'keel-agent')).mode & 0o7777).toBe(0o755);
      expect(statSync(join(tmp, 'keel-agent', 'public')).mode & 0o7777).toBe(0o755);
      const client = workloadClient(socketPath);
      const r = new StreamReader<{ svids: { spiffe_id: string }[] }>(client.FetchX509SVID({}, header()));
      expect((await r.next()).svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/root']);
      r.cancel();
      client.close();
    } finally {
      await server.stop();
    }
  });

  it("the socket's own directory, ours but world-writable (777): refused as writable by others", async () => {
    const d = fresh('own-777');
    chmodSync(d, 0o777);
    const e = await refusal(join(d, 'api.sock'));
    expect(e.directory).toBe(d);
    expect(e.message).toMatch(/mode 0777.*must not be group- or other-writable/);
  });

  it("the socket's own directory group-writable (775): refused", async () => {
    const d = fresh('own-775');
    chmodSync(d, 0o775);
    expect((await refusal(join(d, 'api.sock'))).directory).toBe(d);
  });

  it("the socket's own directory sticky and world-writable (like putting the socket straight in /tmp): refused", async () => {
    const d = fresh('own-sticky');
    chmodSync(d, 0o1777);
    const e = await refusal(join(d, 'api.sock'));
    expect(e.directory).toBe(d);
    expect(e.message).toContain('not even sticky');
  });

  it('an ancestor writable by others without the sticky bit: refused at that ancestor, even though the directories below are ours', async () => {
    const a = fresh('anc-777');
    chmodSync(a, 0o777);
    mkdirSync(join(a, 'mine', 'public'), { recursive: true, mode: 0o755 });
    const e = await refusal(join(a, 'mine', 'public', 'api.sock'));
    expect(e.directory).toBe(a);
    expect(e.message).toContain('writable');
  });

  it('an ancestor owned by another uid, even 0755: refused (its owner can chmod it)', async () => {
    const a = fresh('anc-foreign');
    chownSync(a, ATTACKER, ATTACKER);
    const e = await refusal(join(a, 'public', 'api.sock'));
    expect(e.directory).toBe(a);
    expect(e.message).toContain(`owned by uid ${ATTACKER}`);
    expect(existsSync(join(a, 'public'))).toBe(false);
  });

  it("a symlink on the path is followed and the directories it leads through are judged: a link to another user's directory is refused at the target", async () => {
    const d = fresh('link-to-foreign');
    const target = fresh('foreign-target');
    chownSync(target, ATTACKER, ATTACKER);
    symlinkSync(target, join(d, 'run'));
    const e = await refusal(join(d, 'run', 'api.sock'));
    expect(e.directory).toBe(target);
    expect(e.message).toContain(`owned by uid ${ATTACKER}`);
  });

  it('a symlink owned by another uid inside a sticky dir is refused (they could replace it), one owned by us is followed', () => {
    const tmp = fresh('sticky-links');
    chmodSync(tmp, 0o1777);
    const real = fresh('real-dir');
    execFileSync('ln', ['-s', real, join(tmp, 'theirs')], { uid: ATTACKER, gid: ATTACKER });
    symlinkSync(real, join(tmp, 'ours'));
    let e: unknown;
    try {
      ensureSafeSocketDirectory(join(tmp, 'theirs'));
    } catch (err) {
      e = err;
    }
    expect(e).toBeInstanceOf(UnsafeSocketDirectoryError);
    expect((e as UnsafeSocketDirectoryError).reason).toBe('foreign-entry-in-sticky');
    expect((e as UnsafeSocketDirectoryError).directory).toBe(join(tmp, 'theirs'));
    expect(ensureSafeSocketDirectory(join(tmp, 'ours'))).toBe(real);
  });

  it('a path component that is a file: refused as not a directory', async () => {
    const d = fresh('file-comp');
    execFileSync('touch', [join(d, 'f')]);
    const e = await refusal(join(d, 'f', 'api.sock'));
    expect(e.directory).toBe(join(d, 'f'));
    expect(e.message).toContain('not a directory');
  });
});
