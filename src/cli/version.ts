/**
 * `keel --version` / `keel version`: keel's version from its package.json
 * (found above this module, so it works from src/ under tsx and from dist/),
 * Node's version, and whether the native addon loads.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFlags, type Command } from './command.js';

/** keel's package.json has no version, or cannot be found above this module. */
export class PackageInfoError extends Error {
  override readonly name = 'PackageInfoError';
}

export interface VersionInfo {
  readonly keel: string;
  readonly node: string;
  readonly platform: string;
  /** `loaded`, or why not (`not built: …`, `failed to load: …`). */
  readonly nativeAddon: string;
}

/** The nearest package.json named "keel" above `from` (src/cli or dist/src/cli). */
export function keelPackageJson(from: string = fileURLToPath(import.meta.url)): { path: string; name: string; version: string } {
  for (let dir = dirname(from); ; dir = dirname(dir)) {
    const path = join(dir, 'package.json');
    if (existsSync(path)) {
      let pkg: { name?: unknown; version?: unknown };
      try {
        pkg = JSON.parse(readFileSync(path, 'utf8')) as typeof pkg;
      } catch (e) {
        throw new PackageInfoError(`${path}: ${(e as Error).message}`);
      }
      if (pkg.name === 'keel') {
        if (typeof pkg.version !== 'string' || pkg.version === '') throw new PackageInfoError(`${path} has no version`);
        return { path, name: pkg.name, version: pkg.version };
      }
    }
    if (dirname(dir) === dir) throw new PackageInfoError(`no package.json of keel above ${from}`);
  }
}

async function nativeAddonStatus(): Promise<string> {
  try {
    const { nativeAddon } = await import('../os/native-addon.js');
    nativeAddon();
    return 'loaded';
  } catch (e) {
    const err = e as Error;
    return err.name === 'NativeAddonMissingError' ? `not built (${err.message})` : `failed to load: ${err.message.split('\n')[0]}`;
  }
}

export async function versionInfo(): Promise<VersionInfo> {
  return { keel: keelPackageJson().version, node: process.version, platform: `${process.platform}-${process.arch}`, nativeAddon: await nativeAddonStatus() };
}

export const version: Command = {
  usage: '[--json] [--short]',
  description: "Prints keel's version, the Node.js version and whether the native addon (TPM, peer credentials) loads. --short prints the version alone.",
  async run(argv) {
    const { values } = parseFlags(argv, { json: { type: 'boolean' }, short: { type: 'boolean' } });
    if (values.short) {
      console.log(keelPackageJson().version);
      return 0;
    }
    const v = await versionInfo();
    if (values.json) console.log(JSON.stringify(v, null, 2));
    else console.log(`keel ${v.keel}\nnode ${v.node} (${v.platform})\nnative addon: ${v.nativeAddon}`);
    return 0;
  },
};
