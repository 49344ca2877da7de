/**
 * Tests that run a gRPC client under another uid (65534) need that uid to read
 * grpc-js, proto-loader and the .proto files. A checkout under a directory
 * others cannot enter (/root, a 0700 home) would make those tests fail for a
 * reason that has nothing to do with keel, so the runtime is copied to a
 * world-readable temp dir when the checkout is not reachable.
 */
import { chmodSync, cpSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from '../../src/proto/load.js';

/** What the client scripts import at run time (proto-loader's yargs is only for its CLI). */
const RUNTIME = ['@grpc', '@js-sdsl', 'protobufjs', '@protobufjs', 'long', 'lodash.camelcase'];

function reachableByOthers(path: string): boolean {
  for (let dir = path; ; dir = dirname(dir)) {
    if ((statSync(dir).mode & 0o005) !== 0o005) return false;
    if (dirname(dir) === dir) return true;
  }
}

export interface OtherUidRuntime {
  /** file: URL of a module under node_modules, for `await import(...)` in a client script. */
  moduleUrl(path: string): string;
  /** Path of a file under proto/. */
  proto(file: string): string;
  /** Removes the copy, if one was made. */
  dispose(): void;
}

export function otherUidRuntime(): OtherUidRuntime {
  const root = repoRoot();
  if (reachableByOthers(join(root, 'node_modules', '@grpc', 'grpc-js'))) {
    return {
      moduleUrl: (p) => pathToFileURL(join(root, 'node_modules', p)).href,
      proto: (f) => join(root, 'proto', f),
      dispose: () => undefined,
    };
  }
  const copy = mkdtempSync(join(tmpdir(), 'keel-other-uid-runtime-'));
  chmodSync(copy, 0o755); // mkdtemp makes it 0700
  for (const m of RUNTIME) {
    const from = join(root, 'node_modules', m);
    if (existsSync(from)) cpSync(from, join(copy, 'node_modules', m), { recursive: true });
  }
  cpSync(join(root, 'proto'), join(copy, 'proto'), { recursive: true });
  const dispose = (): void => rmSync(copy, { recursive: true, force: true });
  process.once('exit', dispose);
  return {
    moduleUrl: (p) => pathToFileURL(join(copy, 'node_modules', p)).href,
    proto: (f) => join(copy, 'proto', f),
    dispose,
  };
}
