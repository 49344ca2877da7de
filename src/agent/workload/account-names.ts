/**
 * User and group names from /etc/passwd and /etc/group, read directly (no
 * NSS: the agent must not depend on LDAP or sssd being reachable to attest a
 * workload). Each file is re-read only when its mtime, size or inode changed;
 * the stat per lookup is synchronous, like the procfs reads around it, since
 * it is cheaper than a hop through the libuv thread pool.
 */
import { readFileSync, statSync } from 'node:fs';
import { MAX_ACCOUNT_FILE_CHARS, parseAccountFile } from './proc-parse.js';

interface Cached {
  readonly version: string;
  readonly names: Map<number, string>;
}

export class AccountFile {
  #cached: Cached | undefined;

  constructor(readonly path: string) {}

  /** The name of `id`, or undefined when the file has none (or cannot be read: names are optional selectors). */
  async nameOf(id: number): Promise<string | undefined> {
    try {
      return (await this.#load()).names.get(id);
    } catch {
      return undefined;
    }
  }

  async #load(): Promise<Cached> {
    const st = statSync(this.path, { bigint: true });
    const version = `${st.ino}:${st.mtimeNs}:${st.size}`;
    if (this.#cached?.version === version) return this.#cached;
    const names = st.size > BigInt(MAX_ACCOUNT_FILE_CHARS) ? new Map<number, string>() : parseAccountFile(this.path, readFileSync(this.path, 'utf8'));
    this.#cached = { version, names };
    return this.#cached;
  }
}
