/** Workload attestation of real processes: children spawned under other uids and groups, their /proc, their executables. */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uptimeTicks, WorkloadAttestor } from '../../src/agent/workload/attestor.js';
import { WorkloadAttestationError } from '../../src/agent/workload/errors.js';
import { ExecutableHasher } from '../../src/agent/workload/exe-hash.js';
import { formatSelector } from '../../src/agent/workload/selectors.js';

const SLEEP = realpathSync('/usr/bin/sleep');
const sha256sum = (path: string): string => execFileSync('sha256sum', [path], { encoding: 'utf8' }).split(' ')[0]!;

function startChild(cmd: string, args: string[], opts: { uid?: number; gid?: number } = {}): Promise<ChildProcess> {
  const child = spawn(cmd, args, { stdio: 'ignore', ...opts });
  return new Promise((resolve, reject) => {
    child.once('spawn', () => resolve(child));
    child.once('error', reject);
  });
}

const exited = (c: ChildProcess): Promise<void> => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));

describe('WorkloadAttestor on real processes', () => {
  const children: ChildProcess[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'keel-wl-att-'));
  afterAll(() => {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('a child under uid/gid 65534: uid, gid, names, exe path and sha256 as the OS reports them', async () => {
    const child = await startChild(SLEEP, ['30'], { uid: 65534, gid: 65534 });
    children.push(child);
    const att = await new WorkloadAttestor().attestPid(child.pid!, { pid: child.pid!, uid: 65534, gid: 65534 });
    const sel = att.selectors.map(formatSelector);
    expect(sel).toEqual(
      expect.arrayContaining(['unix:uid:65534', 'unix:gid:65534', 'unix:user:nobody', 'unix:group:nogroup', `unix:path:${SLEEP}`, `unix:sha256:${sha256sum(SLEEP)}`]),
    );
    // spawn() with a uid drops supplementary groups (setgroups(0)); nothing is invented
    expect(sel.filter((s) => s.startsWith('unix:supplementary'))).toEqual([]);
    // this machine's cgroup is the root: no unit, no container
    expect(sel.filter((s) => s.startsWith('systemd:') || s.startsWith('container:'))).toEqual([]);
    expect(att.stamp.pid).toBe(child.pid);
    const awk = execFileSync('awk', ['{print $22}', `/proc/${child.pid}/stat`], { encoding: 'utf8' }).trim();
    expect(att.stamp.startTime).toBe(BigInt(awk));
  });

  it('supplementary groups from /proc/<pid>/status, with names from /etc/group', async () => {
    const child = await startChild('setpriv', ['--reuid=65534', '--regid=65534', '--groups=4,27', SLEEP, '30']);
    children.push(child);
    // setpriv execs sleep in place: same pid. Attested once it runs sleep (an exec during attestation is refused).
    for (let i = 0; i < 100 && readlinkSync(`/proc/${child.pid}/exe`) !== SLEEP; i++) await new Promise((r) => setTimeout(r, 20));
    const att = await new WorkloadAttestor().attestPid(child.pid!, { pid: child.pid!, uid: 65534, gid: 65534 });
    const sel = att!.selectors.map(formatSelector);
    const name = (gid: number) => readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.split(':')[2] === String(gid))!.split(':')[0];
    expect(sel).toEqual(
      expect.arrayContaining([
        'unix:supplementary_gid:4',
        'unix:supplementary_gid:27',
        `unix:supplementary_group:${name(4)}`,
        `unix:supplementary_group:${name(27)}`,
        `unix:path:${SLEEP}`,
      ]),
    );
  });

  it('hashes executables only when some entry uses unix:sha256', async () => {
    const child = await startChild(SLEEP, ['30']);
    children.push(child);
    const lazy = new WorkloadAttestor({ wants: (k) => k !== 'unix:sha256' });
    const att = await lazy.attestPid(child.pid!, { pid: child.pid!, uid: 0, gid: 0 });
    expect(att.selectors.some((s) => s.value.startsWith('sha256:'))).toBe(false);
    expect(lazy.cachedExecutableHashes).toBe(0);
  });

  it('isSameProcess holds while the process lives and fails once it is gone or the start time differs', async () => {
    const child = await startChild(SLEEP, ['30']);
    const a = new WorkloadAttestor({ wants: () => false });
    const att = await a.attestPid(child.pid!, { pid: child.pid!, uid: 0, gid: 0 });
    expect(await a.isSameProcess(att.stamp)).toBe(true);
    // a process with the same pid but another start time is another process
    expect(await a.isSameProcess({ pid: att.stamp.pid, startTime: att.stamp.startTime + 1n })).toBe(false);
    child.kill('SIGKILL');
    await exited(child);
    expect(await a.isSameProcess(att.stamp)).toBe(false);
    const err = await a.attestPid(child.pid!, { pid: child.pid!, uid: 0, gid: 0 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkloadAttestationError);
    expect((err as WorkloadAttestationError).reason).toBe('process-gone');
  });

  it('refuses a pid whose process started after the connection was accepted', async () => {
    const before = await uptimeTicks();
    await new Promise((r) => setTimeout(r, 50));
    const child = await startChild(SLEEP, ['30']);
    children.push(child);
    const a = new WorkloadAttestor({ wants: () => false });
    const err = await a.attestPid(child.pid!, { pid: child.pid!, uid: 0, gid: 0 }, before).catch((e: unknown) => e);
    expect((err as WorkloadAttestationError).reason).toBe('process-newer-than-connection');
    // and accepts it against a later acceptance time
    await expect(a.attestPid(child.pid!, { pid: child.pid!, uid: 0, gid: 0 }, await uptimeTicks())).resolves.toBeDefined();
  });

  it("a process that exec's another program after its image was recorded: attestation bound to that image refuses it, isSameProcess turns false", async () => {
    const sh = realpathSync('/bin/sh');
    const child = spawn(sh, ['-c', `read x; exec ${SLEEP} 30`], { stdio: ['pipe', 'ignore', 'ignore'] });
    children.push(child);
    await new Promise((r) => child.once('spawn', r));
    for (let i = 0; i < 100 && readlinkSync(`/proc/${child.pid}/exe`) !== sh; i++) await new Promise((r) => setTimeout(r, 20));
    const a = new WorkloadAttestor({ wants: () => true });
    const peer = { pid: child.pid!, uid: 0, gid: 0 };
    const image = a.imageOf(child.pid!);
    // Bound to the shell, attested while it is the shell: served, with the shell's path and hash.
    const before = await a.attestPid(child.pid!, peer, undefined, image);
    expect(before.selectors.map(formatSelector)).toContain(`unix:path:${sh}`);
    expect(await image.sha256).toBe(sha256sum(sh));
    child.stdin!.end('go\n');
    for (let i = 0; i < 100 && readlinkSync(`/proc/${child.pid}/exe`) !== SLEEP; i++) await new Promise((r) => setTimeout(r, 20));
    expect(readlinkSync(`/proc/${child.pid}/exe`)).toBe(SLEEP);
    // Same pid, same start time: only the executable tells the exec apart.
    expect(a.imageOf(child.pid!).startTime).toBe(image.startTime);
    expect(await a.isSameProcess(before.stamp)).toBe(false);
    const err = await a.attestPid(child.pid!, peer, undefined, image).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkloadAttestationError);
    expect((err as WorkloadAttestationError).reason).toBe('exe-changed');
    expect((err as Error).message).toContain("exec'd since");
    // Unbound, the same process attests as sleep: the binding is what refuses.
    const unbound = await a.attestPid(child.pid!, peer);
    expect(unbound.selectors.map(formatSelector)).toContain(`unix:path:${SLEEP}`);
  });

  it('refuses pids that are not process ids', async () => {
    const a = new WorkloadAttestor();
    for (const pid of [0, -1, 1.5, Number.NaN]) {
      await expect(a.attestPid(pid, { pid, uid: 0, gid: 0 })).rejects.toBeInstanceOf(WorkloadAttestationError);
    }
  });

  it('the executable hash cache is keyed by (dev, inode, mtime, size): a changed file is hashed again', async () => {
    const f = join(dir, 'prog');
    copyFileSync(SLEEP, f);
    const h = new ExecutableHasher();
    expect(await h.hash(f)).toBe(sha256sum(f));
    expect(await h.hash(f)).toBe(sha256sum(f));
    expect(h.cachedCount).toBe(1);
    // same size, different content, new mtime
    const bytes = readFileSync(f);
    bytes[100] = bytes[100]! ^ 0xff;
    writeFileSync(f, bytes);
    utimesSync(f, new Date(), new Date(Date.now() + 5000));
    expect(await h.hash(f)).toBe(sha256sum(f));
    expect(h.cachedCount).toBe(2);
  });
});
