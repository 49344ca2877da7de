/**
 * Loads keel's native addon (native/build/Release/keel_native.node, built by
 * `npm run build:native`) and types its raw surface. Callers use the typed
 * wrappers instead: src/tpm/device.ts and src/os/peercred.ts.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** [TPM_ALG_ID of the bank, bitmask of PCRs 0..23]. */
export type NativePcrSel = [alg: number, mask: number];

export interface NativeAkInfo {
  id: number;
  name: Buffer;
  public?: Buffer;
}

/** The C++ class; every method settles on the main thread, runs on a worker. */
export interface NativeTpmDevice {
  connect(): Promise<void>;
  close(): Promise<void>;
  /** Rebuilds ESYS and the TCTI after a broken connection; loaded keys reload on their next use. */
  reconnect(): Promise<void>;
  getRandom(count: number): Promise<Buffer>;
  pcrRead(sel: NativePcrSel[]): Promise<{ alg: number; pcr: number; digest: Buffer }[]>;
  pcrExtend(pcr: number, digests: [alg: number, digest: Buffer][]): Promise<void>;
  ekPublic(kind: number): Promise<Buffer>;
  readNv(index: number): Promise<Buffer | undefined>;
  createAk(ek: number, ak: number): Promise<{ public: Buffer; private: Buffer }>;
  loadAk(ek: number, pub: Buffer, priv: Buffer): Promise<NativeAkInfo>;
  persistAk(id: number, handle: number): Promise<void>;
  akFromPersistent(handle: number): Promise<Required<NativeAkInfo>>;
  evictPersistent(handle: number): Promise<void>;
  quote(id: number, sel: NativePcrSel[], nonce: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  activateCredential(id: number, ek: number, blob: Buffer, secret: Buffer): Promise<Buffer>;
  flushAk(id: number): Promise<void>;
  loadedHandles(): Promise<{ transient: number[]; sessions: number[] }>;
  createAgentKey(ek: number): Promise<{ public: Buffer; private: Buffer }>;
  loadAgentKey(ek: number, pub: Buffer, priv: Buffer): Promise<NativeAkInfo>;
  agentKeyFromPersistent(handle: number): Promise<Required<NativeAkInfo>>;
  certify(objectId: number, akId: number, nonce: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  sign(keyId: number, digest: Buffer): Promise<Buffer>;
}

export interface NativeAddon {
  TpmDevice: new (tcti: string) => NativeTpmDevice;
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  peerGroups(fd: number): number[];
}

export class NativeAddonMissingError extends Error {
  override name = 'NativeAddonMissingError';
}

/** The directory holding package.json above this file (src/os or dist/src/os). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new NativeAddonMissingError('cannot find keel\'s package.json above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

let cached: NativeAddon | undefined;

export function nativeAddon(): NativeAddon {
  if (cached) return cached;
  const path = join(repoRoot(), 'native', 'build', 'Release', 'keel_native.node');
  if (!existsSync(path)) {
    throw new NativeAddonMissingError(`keel's native addon is not built (${path}): run \`npm run build:native\``);
  }
  // tpm2-tss logs every TPM error response to stderr; keel reports them as
  // typed errors instead. Set TSS2_LOG (e.g. "all+ERROR") to see tss2's own log.
  // (tss2 reads the variable when it first logs, from the process environment.)
  process.env.TSS2_LOG ??= 'all+NONE';
  cached = createRequire(import.meta.url)(path) as NativeAddon;
  return cached;
}
