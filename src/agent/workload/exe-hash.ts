/**
 * SHA-256 of a process's executable, read through /proc/<pid>/exe (the file
 * the process really runs, even if its path was replaced or unlinked since).
 * Hashing a 100 MB binary takes a good part of a second, so results are kept
 * by (device, inode, mtime, size) of the open file: a rebuilt binary gets a
 * new mtime or inode and is hashed again.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

const MAX_CACHED = 512;

export class ExecutableHasher {
  readonly #done = new Map<string, string>();
  readonly #inFlight = new Map<string, Promise<string>>();

  /** Hex SHA-256 of the file at `exePath` (normally /proc/<pid>/exe). Rejects with the fs error. */
  async hash(exePath: string): Promise<string> {
    const fh = await open(exePath, 'r');
    try {
      const st = await fh.stat({ bigint: true });
      const key = `${st.dev}:${st.ino}:${st.mtimeNs}:${st.size}`;
      const hit = this.#done.get(key);
      if (hit !== undefined) {
        // Refresh recency: Map iteration order is insertion order.
        this.#done.delete(key);
        this.#done.set(key, hit);
        return hit;
      }
      let p = this.#inFlight.get(key);
      if (!p) {
        p = hashHandle(fh).finally(() => this.#inFlight.delete(key));
        this.#inFlight.set(key, p);
        const hex = await p;
        this.#done.set(key, hex);
        if (this.#done.size > MAX_CACHED) this.#done.delete(this.#done.keys().next().value as string);
        return hex;
      }
      return await p;
    } finally {
      await fh.close();
    }
  }

  get cachedCount(): number {
    return this.#done.size;
  }
}

async function hashHandle(fh: import('node:fs/promises').FileHandle): Promise<string> {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(1 << 20);
  let pos = 0;
  for (;;) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) break;
    h.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
  return h.digest('hex');
}
