/**
 * An X.509-SVID kept as files in a directory, for programs that cannot speak
 * the Workload API (what spiffe-helper does). A consumer must never see a
 * certificate that does not match the key, nor a bundle from another update,
 * so a set is never rewritten in place:
 *
 *   DIR/.keel-000000000007/   one complete set: svid.pem, svid.key, bundle.pem, federated-<td>.pem
 *   DIR/current  -> .keel-000000000007          (swapped with one rename)
 *   DIR/svid.pem -> current/svid.pem            (made once; the names consumers are configured with)
 *   DIR/svid.key -> current/svid.key
 *   DIR/bundle.pem -> current/bundle.pem
 *
 * Each update is written into a fresh hidden generation directory (every file
 * fsynced, then the directory), which is renamed into place and then published
 * by replacing the `current` symlink with rename(2): the switch from one
 * complete set to the next is a single atomic step. Whoever resolves `current`
 * once (realpath) reads one set; whoever opens DIR/svid.pem and DIR/svid.key
 * separately gets one set as long as no swap falls between the two opens, and
 * the previous generation stays on disk until the next update so that a file
 * opened a moment before a swap is still complete. The files are checked
 * before anything is written: the key belongs to the leaf, and the chain is
 * an X.509-SVID that chains to the bundle it came with.
 */
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { lchown, lstat, mkdir, open, readdir, readFile, readlink, rename, rm, stat, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BundleSet, TrustBundle } from '../../spiffe/bundle.js';
import { BundleError, X509SvidError } from '../../spiffe/errors.js';
import { spiffeIdFromCertificate, verifyX509Svid } from '../../spiffe/x509-svid.js';
import { derToPem } from '../../spiffe/der.js';
import { SvidFileSetError } from './errors.js';

/** What one update writes: the SVID of one identity, its trust domain's bundle, and federated bundles. */
export interface SvidFileContent {
  /** DER certificates, leaf first. */
  readonly chainDer: readonly Buffer[];
  /** Unencrypted PKCS#8 DER. */
  readonly keyPkcs8Der: Buffer;
  /** The X.509 authorities of the SVID's trust domain, DER. */
  readonly bundleDer: readonly Buffer[];
  /** Federated trust domains (name without `spiffe://`) → their X.509 authorities, DER. */
  readonly federated: ReadonlyMap<string, readonly Buffer[]>;
}

export interface SvidFileLayout {
  /** Leaf and intermediates, PEM (spiffe-helper: svid_file_name). Default `svid.pem`. */
  readonly svidFileName: string;
  /** PKCS#8 PEM private key (spiffe-helper: svid_key_file_name). Default `svid.key`. */
  readonly keyFileName: string;
  /** The trust domain's CA certificates, PEM (spiffe-helper: svid_bundle_file_name). Default `bundle.pem`. */
  readonly bundleFileName: string;
  /** Name of each federated bundle; `{trust_domain}` is replaced by its name. Default `federated-{trust_domain}.pem`. */
  readonly federatedFileName: string;
  /** Also append the federated CAs to the bundle file (spiffe-helper: include_federated_domains). */
  readonly includeFederatedInBundle: boolean;
  /** Mode of the certificate and bundle files. Default 0644. */
  readonly certMode: number;
  /** Mode of the key file. Default 0600; group or world write is refused. */
  readonly keyMode: number;
  /** Mode of each generation directory. Default 0755. */
  readonly dirMode: number;
  /** Owner of the files and generation directories (needs the privilege to chown); unchanged when undefined. */
  readonly uid?: number;
  readonly gid?: number;
  /** How many generations before the current one stay on disk (≥ 1). Default 1. */
  readonly keepPrevious: number;
}

export const DEFAULT_LAYOUT: SvidFileLayout = {
  svidFileName: 'svid.pem',
  keyFileName: 'svid.key',
  bundleFileName: 'bundle.pem',
  federatedFileName: 'federated-{trust_domain}.pem',
  includeFederatedInBundle: false,
  certMode: 0o644,
  keyMode: 0o600,
  dirMode: 0o755,
  keepPrevious: 1,
};

export const CURRENT_LINK = 'current';
const GENERATION_RE = /^\.keel-(\d{12})$/;
const TD_PLACEHOLDER = '{trust_domain}';
const NAME_RE = /^[A-Za-z0-9._-]{1,200}$/;

export interface WriteResult {
  /** False when the directory already held exactly this set (nothing written, no command to run). */
  readonly changed: boolean;
  /** The generation directory that is current now, e.g. `.keel-000000000003`. */
  readonly generation: string;
  /** The file names of the set, as they appear in the directory. */
  readonly files: readonly string[];
  /** The leaf's serial number (hex, lowercase). */
  readonly serial: string;
}

function checkName(what: string, name: string): void {
  if (!NAME_RE.test(name) || name === '.' || name === '..' || name.startsWith('.keel-') || name === CURRENT_LINK) {
    throw new SvidFileSetError('bad-file-name', `${what}: ${JSON.stringify(name)} is not a plain file name (letters, digits, . _ -; not "current", not starting with ".keel-")`);
  }
}

function checkMode(what: string, mode: number): void {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) throw new SvidFileSetError('bad-mode', `${what}: expected a permission mode 0000..0777, got ${mode}`);
}

/** Checks a layout once, up front: names plain and distinct, modes sane, the key not writable by others. */
export function checkLayout(l: SvidFileLayout): void {
  checkName('svid file name', l.svidFileName);
  checkName('key file name', l.keyFileName);
  checkName('bundle file name', l.bundleFileName);
  const parts = l.federatedFileName.split(TD_PLACEHOLDER);
  if (parts.length !== 2) throw new SvidFileSetError('bad-file-name', `federated bundle file name: ${JSON.stringify(l.federatedFileName)} must contain ${TD_PLACEHOLDER} exactly once`);
  checkName('federated bundle file name', l.federatedFileName.replace(TD_PLACEHOLDER, 'example.org'));
  const fixed = [l.svidFileName, l.keyFileName, l.bundleFileName];
  if (new Set(fixed).size !== fixed.length) throw new SvidFileSetError('bad-file-name', `the svid, key and bundle file names must differ, got ${fixed.join(', ')}`);
  for (const f of fixed) {
    if (f.startsWith(parts[0]!) && f.endsWith(parts[1]!) && f.length > parts[0]!.length + parts[1]!.length) {
      throw new SvidFileSetError('bad-file-name', `${f} could also be the name of a federated bundle (${l.federatedFileName})`);
    }
  }
  checkMode('cert mode', l.certMode);
  checkMode('key mode', l.keyMode);
  checkMode('directory mode', l.dirMode);
  if (l.keyMode & 0o022) throw new SvidFileSetError('bad-mode', `key mode ${l.keyMode.toString(8).padStart(4, '0')} lets others write the private key`);
  for (const [what, id] of [['uid', l.uid], ['gid', l.gid]] as const) {
    if (id !== undefined && (!Number.isInteger(id) || id < 0 || id > 0xfffffffe)) throw new SvidFileSetError('bad-mode', `${what}: expected a numeric id, got ${id}`);
  }
  if (!Number.isInteger(l.keepPrevious) || l.keepPrevious < 1 || l.keepPrevious > 100) throw new SvidFileSetError('bad-mode', `keep previous: expected 1..100, got ${l.keepPrevious}`);
}

const pem = (ders: readonly Buffer[]): string => ders.map((d) => derToPem(d)).join('');

interface PlannedFile {
  readonly name: string;
  readonly data: Buffer;
  readonly mode: number;
}

/** Checks the content (key matches leaf, chain valid to the bundle) and renders the files. */
export function planFileSet(content: SvidFileContent, l: SvidFileLayout, now = new Date()): { files: PlannedFile[]; serial: string } {
  if (content.chainDer.length === 0) throw new SvidFileSetError('incomplete', 'the update has no certificate');
  if (content.keyPkcs8Der.length === 0) throw new SvidFileSetError('incomplete', 'the update has no private key');
  if (content.bundleDer.length === 0) throw new SvidFileSetError('incomplete', 'the update has no bundle');
  let chain: X509Certificate[];
  let roots: X509Certificate[];
  try {
    chain = content.chainDer.map((d) => new X509Certificate(d));
    roots = content.bundleDer.map((d) => new X509Certificate(d));
  } catch (e) {
    throw new SvidFileSetError('chain-invalid', `a certificate does not parse: ${(e as Error).message}`, { cause: e });
  }
  const leaf = chain[0]!;
  let keyPem: string;
  try {
    const key = createPrivateKey({ key: content.keyPkcs8Der, format: 'der', type: 'pkcs8' });
    const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
    if (!spki.equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))) {
      throw new SvidFileSetError('key-mismatch', `the private key does not belong to the certificate with serial ${leaf.serialNumber.toLowerCase()}`);
    }
    keyPem = key.export({ format: 'pem', type: 'pkcs8' }) as string;
  } catch (e) {
    if (e instanceof SvidFileSetError) throw e;
    throw new SvidFileSetError('key-mismatch', `the private key is not PKCS#8 DER: ${(e as Error).message}`, { cause: e });
  }
  try {
    const bundle = TrustBundle.create({ trustDomain: spiffeIdFromCertificate(leaf).trustDomain, x509Authorities: roots });
    verifyX509Svid(chain, BundleSet.of([bundle]), { now });
  } catch (e) {
    const why = e instanceof X509SvidError ? `${e.rule}: ${e.message}` : e instanceof BundleError ? `${e.reason}: ${e.message}` : (e as Error).message;
    throw new SvidFileSetError('chain-invalid', `the certificate does not verify against its bundle (${why})`, { cause: e });
  }

  const federated = [...content.federated.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const bundlePem = pem(content.bundleDer) + (l.includeFederatedInBundle ? federated.map(([, d]) => pem(d)).join('') : '');
  const files: PlannedFile[] = [
    { name: l.svidFileName, data: Buffer.from(pem(content.chainDer)), mode: l.certMode },
    { name: l.keyFileName, data: Buffer.from(keyPem), mode: l.keyMode },
    { name: l.bundleFileName, data: Buffer.from(bundlePem), mode: l.certMode },
  ];
  for (const [td, ders] of federated) {
    const name = l.federatedFileName.replace(TD_PLACEHOLDER, td);
    checkName(`federated bundle file of ${td}`, name);
    if (files.some((f) => f.name === name)) throw new SvidFileSetError('bad-file-name', `the federated bundle of ${td} would overwrite ${name}`);
    files.push({ name, data: Buffer.from(pem(ders)), mode: l.certMode });
  }
  return { files, serial: leaf.serialNumber.toLowerCase() };
}

async function fsyncPath(path: string, flags = fsc.O_RDONLY): Promise<void> {
  const fh = await open(path, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces `path` with a symlink to `target` in one rename, whatever was there (file or link). */
async function swapLink(dir: string, name: string, target: string): Promise<void> {
  const tmp = join(dir, `.keel-link-${name}`);
  await rm(tmp, { force: true });
  await symlink(target, tmp);
  await rename(tmp, join(dir, name));
}

/** Keeps an SVID file set in `dir` (see the module comment for the layout). One writer per directory. */
export class SvidFileWriter {
  readonly #layout: SvidFileLayout;
  #busy: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dir: string,
    layout: Partial<SvidFileLayout> = {},
  ) {
    this.#layout = { ...DEFAULT_LAYOUT, ...layout };
    checkLayout(this.#layout);
  }

  get layout(): SvidFileLayout {
    return this.#layout;
  }

  /**
   * Writes `content` as the new current set, unless the directory already
   * holds exactly that (content, modes and owner). Throws SvidFileSetError and
   * leaves the previous set in place when the content is not consistent or a
   * write fails. Calls are serialised.
   */
  write(content: SvidFileContent, now = new Date()): Promise<WriteResult> {
    const run = this.#busy.then(() => this.#write(content, now));
    this.#busy = run.catch(() => undefined);
    return run;
  }

  async #write(content: SvidFileContent, now: Date): Promise<WriteResult> {
    const { files, serial } = planFileSet(content, this.#layout, now);
    const names = files.map((f) => f.name);
    try {
      await this.#ensureDir();
      const current = await this.#currentGeneration();
      if (current && (await this.#holds(current, files))) {
        await this.#addLinks(names);
        await this.#dropStaleLinks(names);
        return { changed: false, generation: current, files: names, serial };
      }
      const generation = await this.#nextGeneration();
      await this.#writeGeneration(generation, files);
      // The names first (through `current`, still the old set), then the swap:
      // once `current` names a generation, every name of its set resolves.
      await this.#addLinks(names);
      await swapLink(this.dir, CURRENT_LINK, generation);
      await fsyncPath(this.dir);
      await this.#dropStaleLinks(names);
      await fsyncPath(this.dir);
      await this.#prune(generation);
      return { changed: true, generation, files: names, serial };
    } catch (e) {
      if (e instanceof SvidFileSetError) throw e;
      throw new SvidFileSetError('io', `writing the SVID files in ${this.dir} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  async #ensureDir(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    const st = await lstat(this.dir);
    if (!st.isDirectory()) throw new SvidFileSetError('not-a-directory', `${this.dir} is not a directory`);
  }

  /** The generation `current` points at, when it is one of ours and exists. */
  async #currentGeneration(): Promise<string | undefined> {
    try {
      const target = await readlink(join(this.dir, CURRENT_LINK));
      if (!GENERATION_RE.test(target)) return undefined;
      return (await stat(join(this.dir, target))).isDirectory() ? target : undefined;
    } catch {
      return undefined;
    }
  }

  async #holds(generation: string, files: readonly PlannedFile[]): Promise<boolean> {
    const dir = join(this.dir, generation);
    const present = (await readdir(dir)).sort();
    if (present.join('\0') !== files.map((f) => f.name).sort().join('\0')) return false;
    for (const f of files) {
      const path = join(dir, f.name);
      const st = await lstat(path);
      if (!st.isFile() || (st.mode & 0o777) !== f.mode) return false;
      if ((this.#layout.uid !== undefined && st.uid !== this.#layout.uid) || (this.#layout.gid !== undefined && st.gid !== this.#layout.gid)) return false;
      if (!(await readFile(path)).equals(f.data)) return false;
    }
    return true;
  }

  async #nextGeneration(): Promise<string> {
    let max = 0;
    for (const name of await readdir(this.dir)) {
      const m = /^\.keel-(\d{12})(?:\.tmp)?$/.exec(name);
      if (m) max = Math.max(max, Number(m[1]));
    }
    return `.keel-${String(max + 1).padStart(12, '0')}`;
  }

  async #writeGeneration(generation: string, files: readonly PlannedFile[]): Promise<void> {
    const { uid, gid, dirMode } = this.#layout;
    const tmp = join(this.dir, `${generation}.tmp`);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { mode: dirMode });
    for (const f of files) {
      const fh = await open(join(tmp, f.name), fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, f.mode);
      try {
        // The umask may have taken bits from the mode given to open(2).
        await fh.chmod(f.mode);
        if (uid !== undefined || gid !== undefined) await fh.chown(uid ?? -1, gid ?? -1);
        await fh.writeFile(f.data);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
    const dh = await open(tmp, fsc.O_RDONLY | fsc.O_DIRECTORY);
    try {
      await dh.chmod(dirMode);
      if (uid !== undefined || gid !== undefined) await dh.chown(uid ?? -1, gid ?? -1);
      await dh.sync();
    } finally {
      await dh.close();
    }
    await rename(tmp, join(this.dir, generation));
  }

  /** DIR/<name> → current/<name> for every file of the set. */
  async #addLinks(names: readonly string[]): Promise<void> {
    const { uid, gid } = this.#layout;
    for (const name of names) {
      const want = `${CURRENT_LINK}/${name}`;
      const have = await readlink(join(this.dir, name)).catch(() => undefined);
      if (have === want) continue;
      await swapLink(this.dir, name, want);
      if (uid !== undefined || gid !== undefined) await lchown(join(this.dir, name), uid ?? -1, gid ?? -1);
    }
  }

  /** Links of ours to files no longer in the set go (after the swap: until then the old set still has them). */
  async #dropStaleLinks(names: readonly string[]): Promise<void> {
    const { uid, gid } = this.#layout;
    const keep = new Set(names);
    for (const name of await readdir(this.dir)) {
      if (keep.has(name) || name === CURRENT_LINK || name.startsWith('.keel-')) continue;
      const target = await readlink(join(this.dir, name)).catch(() => undefined);
      if (target?.startsWith(`${CURRENT_LINK}/`)) await unlink(join(this.dir, name));
    }
    if (uid !== undefined || gid !== undefined) await lchown(join(this.dir, CURRENT_LINK), uid ?? -1, gid ?? -1).catch(() => undefined);
  }

  /** Removes generations older than the `keepPrevious` before `current`, and leftovers of interrupted writes. */
  async #prune(current: string): Promise<void> {
    const entries = await readdir(this.dir);
    const generations = entries.filter((n) => GENERATION_RE.test(n) && n !== current).sort();
    const old = generations.slice(0, Math.max(0, generations.length - this.#layout.keepPrevious));
    const leftovers = entries.filter((n) => /^\.keel-\d{12}\.tmp$/.test(n) || n.startsWith('.keel-link-'));
    for (const n of [...old, ...leftovers]) await rm(join(this.dir, n), { recursive: true, force: true });
  }
}
