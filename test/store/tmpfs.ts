/**
 * A small tmpfs that tests can fill to the last byte, for "disk full" faults.
 * Mounting needs root (as CI runs); elsewhere the tests that need it skip and
 * say why.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, rmdir, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const canMountTmpfs = typeof process.getuid === 'function' && process.getuid() === 0;
export const NOT_ROOT = 'skipped: mounting a tmpfs for the full-disk tests needs root (CI runs them as root)';

export interface SmallDisk {
  readonly dir: string;
  /** Writes a filler file until the file system answers ENOSPC. */
  fill(): Promise<void>;
  /** Removes the filler: the space is back. */
  free(): Promise<void>;
  unmount(): Promise<void>;
}

export async function mountSmallDisk(sizeBytes = 8 << 20): Promise<SmallDisk> {
  const dir = await mkdtemp(join(tmpdir(), 'keel-tmpfs-'));
  await run('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes},mode=0700`, 'tmpfs', dir]);
  const filler = join(dir, 'filler');
  return {
    dir,
    async fill() {
      const fh = await open(filler, 'a');
      const chunk = Buffer.alloc(4096, 0x5a);
      try {
        for (;;) await fh.write(chunk);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      } finally {
        await fh.close();
      }
    },
    async free() {
      await unlink(filler).catch(() => undefined);
    },
    async unmount() {
      await run('umount', [dir]).catch(() => undefined);
      await rmdir(dir).catch(() => rm(dir, { recursive: true, force: true }));
    },
  };
}
