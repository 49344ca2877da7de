/**
 * A restart is a new process: two child processes in turn open the same
 * SoftHSM token and journal directory; the second finds its keys by label and
 * its certificate in the journal, and what it issues verifies with the bundle
 * the first one published.
 */
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSoftHsmToken, type SoftHsmToken } from '../../simulator/softhsm.js';
import { derToPem } from '../../src/server/ca/index.js';
import { bundleFromJwks, validateJwtSvid, verifyX509Svid, BundleSet } from '../../src/spiffe/index.js';
import { run } from './helpers.js';

const exec = promisify(execFile);
const child = join(import.meta.dirname, 'fixtures', 'issue-child.ts');

interface ChildOut {
  pid: number;
  ca: string;
  leaf: string;
  jwt: string;
  jwks: string;
  status: string[];
}

describe('restart in a fresh process', () => {
  let tok: SoftHsmToken;
  let dir: string;
  const runChild = async (spiffeId: string): Promise<ChildOut> => {
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', child, join(dir, 'journal'), join(dir, 'w.csr'), spiffeId], {
      env: { ...tok.env, KEEL_CA_MODULE: tok.module, KEEL_CA_TOKEN: tok.label, KEEL_CA_CHILD_PIN: tok.pin },
      cwd: join(import.meta.dirname, '..', '..'),
    });
    return JSON.parse(stdout) as ChildOut;
  };

  beforeAll(async () => {
    tok = await createSoftHsmToken({ label: 'keel-restart' });
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-restart-'));
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'w.key'), '-subj', '/CN=w', '-out', join(dir, 'w.csr')]);
  });
  afterAll(async () => {
    await tok?.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('keeps the same CA and keys, and new SVIDs verify with the old bundle', async () => {
    const first = await runChild('spiffe://example.org/one');
    const second = await runChild('spiffe://example.org/two');
    expect(second.pid).not.toBe(first.pid);
    expect(second.ca).toBe(first.ca);
    expect(second.status).toEqual(first.status);
    expect(first.status).toEqual(['keel-x509-ca-1:active', 'keel-jwt-1:active']);

    // openssl: the second process's leaf with the first process's bundle.
    const oldBundle = bundleFromJwks('example.org', first.jwks);
    await writeFile(join(dir, 'bundle.pem'), oldBundle.x509Authorities.map((c) => c.toString()).join(''));
    await writeFile(join(dir, 'leaf2.pem'), derToPem(Buffer.from(second.leaf, 'base64')));
    const v = await run('openssl', ['verify', '-CAfile', join(dir, 'bundle.pem'), join(dir, 'leaf2.pem')]);
    expect(v.stdout).toContain('leaf2.pem: OK');
    expect(verifyX509Svid([new X509Certificate(Buffer.from(second.leaf, 'base64'))], BundleSet.of([oldBundle])).id.toString()).toBe('spiffe://example.org/two');
    // The JWT key survived too.
    const jwt = await validateJwtSvid(second.jwt, BundleSet.of([oldBundle]), 'restart-test');
    expect(jwt.id.toString()).toBe('spiffe://example.org/two');

    const journal = JSON.parse(await readFile(join(dir, 'journal', 'ca-journal.json'), 'utf8')) as { x509: { certificate: string }[] };
    expect(journal.x509[0]!.certificate).toBe(first.ca);
  });

  it('refuses to start when the journal names a key the HSM does not have', async () => {
    const other = await createSoftHsmToken({ label: 'keel-restart' });
    try {
      const err = await exec(process.execPath, ['--import', 'tsx', child, join(dir, 'journal'), join(dir, 'w.csr'), 'spiffe://example.org/x'], {
        env: { ...other.env, KEEL_CA_MODULE: other.module, KEEL_CA_TOKEN: other.label, KEEL_CA_CHILD_PIN: other.pin },
        cwd: join(import.meta.dirname, '..', '..'),
      }).then(
        () => undefined,
        (e: { stderr: string }) => e,
      );
      expect(err?.stderr).toMatch(/CaStateError: the journal names HSM key keel-x509-ca-1/);
      expect(err?.stderr).not.toContain(other.pin);
    } finally {
      await other.destroy();
    }
  });
});
