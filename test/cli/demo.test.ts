/**
 * The README's first command ends in `keel demo`: it must tell the whole
 * story on a fresh machine and stop everything it started.
 */
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const MAIN = resolve(import.meta.dirname, '../../src/cli/main.ts');

async function demoDirs(): Promise<string[]> {
  return (await readdir(tmpdir())).filter((d) => d.startsWith('keel-demo-'));
}

describe('keel demo', () => {
  it('attests a simulated node, serves SVIDs over the Workload API, does mTLS and a rotation, then cleans up', async () => {
    const before = new Set(await demoDirs());
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', MAIN, 'demo'], { timeout: 120_000 });
    for (const step of [
      '[3] keel agent attested its node with the TPM',
      '[5] A workload fetched its identities from the SPIFFE Workload API',
      '[6] Two workloads opened a mutual-TLS connection with their SVIDs',
      '[7] Rotation',
      'Demo finished',
    ]) {
      expect(stdout).toContain(step);
    }
    expect(stdout).toMatch(/agent SPIFFE ID: spiffe:\/\/example\.org\/keel\/agent\/tpm\/[0-9a-f]{64}/);
    expect(stdout).toContain('web (server side) saw its peer as spiffe://example.org/demo/db');
    expect(stdout).toContain('db  (client side) saw its peer as spiffe://example.org/demo/web');
    expect(stderr).not.toMatch(/Error|Warning/);
    // Its work directory is gone.
    const left = (await demoDirs()).filter((d) => !before.has(d));
    expect(left).toEqual([]);
  }, 150_000);
});
