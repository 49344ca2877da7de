/** `keel --version` / `keel version`: the version of package.json, found from src/ and from dist/. */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { keelPackageJson, PackageInfoError } from '../../src/cli/version.js';
import { repoRoot } from '../../src/proto/load.js';

const pkg = JSON.parse(readFileSync(join(repoRoot(), 'package.json'), 'utf8')) as { version: string };

async function keel(...argv: string[]): Promise<{ code: number; out: string }> {
  const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
  try {
    const code = await main(argv);
    return { code, out: log.mock.calls.flat().join('\n') };
  } finally {
    log.mockRestore();
  }
}

describe('keel --version', () => {
  it('prints the version of package.json, Node and the addon status', async () => {
    const r = await keel('--version');
    expect(r.code).toBe(0);
    expect(r.out.split('\n')[0]).toBe(`keel ${pkg.version}`);
    expect(r.out).toContain(`node ${process.version}`);
    expect(r.out).toMatch(/native addon: (loaded|not built|failed to load)/);
  });

  it('`keel version --json` and `--short` say the same', async () => {
    const j = await keel('version', '--json');
    expect(JSON.parse(j.out)).toMatchObject({ keel: pkg.version, node: process.version });
    expect((await keel('version', '--short')).out).toBe(pkg.version);
    expect((await keel('--version', '--short')).out).toBe(pkg.version);
  });

  it('finds package.json from the dist/ layout too, skipping package.json files of other packages', () => {
    expect(keelPackageJson(join(repoRoot(), 'dist', 'src', 'cli', 'main.js'))).toMatchObject({ path: join(repoRoot(), 'package.json'), version: pkg.version });
    const dir = mkdtempSync(join(tmpdir(), 'keel-version-'));
    try {
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'keel', version: '9.8.7' }));
      mkdirSync(join(dir, 'node_modules', 'other', 'cli'), { recursive: true });
      writeFileSync(join(dir, 'node_modules', 'other', 'package.json'), JSON.stringify({ name: 'other', version: '1.0.0' }));
      expect(keelPackageJson(join(dir, 'node_modules', 'other', 'cli', 'main.js')).version).toBe('9.8.7');
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'keel' }));
      expect(() => keelPackageJson(join(dir, 'x.js'))).toThrow(PackageInfoError);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
