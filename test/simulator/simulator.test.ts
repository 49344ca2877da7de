import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { describe, it, expect } from 'vitest';
import { startSwtpm } from '../../simulator/swtpm.js';
import { createSoftHsmToken } from '../../simulator/softhsm.js';

const run = promisify(execFile);

describe('simulator', () => {
  it('starts two independent swtpms with their own local CAs, answering tpm2-tools', async () => {
    const [a, b] = await Promise.all([startSwtpm(), startSwtpm()]);
    try {
      expect(a.port).not.toBe(b.port);
      for (const t of [a, b]) {
        const { stdout } = await run('tpm2_getrandom', ['--hex', '8'], { env: t.env });
        expect(stdout.trim()).toMatch(/^[0-9a-f]{16}$/);
        expect(t.manufacturerCaPems).toHaveLength(2);
        const root = new X509Certificate(t.manufacturerCaPems[0]!);
        const issuer = new X509Certificate(t.manufacturerCaPems[1]!);
        expect(issuer.verify(root.publicKey)).toBe(true);
      }
      const ra = new X509Certificate(a.manufacturerCaPems[0]!);
      const rb = new X509Certificate(b.manufacturerCaPems[0]!);
      expect(ra.fingerprint256).not.toBe(rb.fingerprint256);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('creates a SoftHSM token in its own directory', async () => {
    const tok = await createSoftHsmToken({ label: 'sim-test' });
    try {
      const { stdout } = await run('softhsm2-util', ['--show-slots'], { env: tok.env });
      expect(stdout).toContain('sim-test');
    } finally {
      await tok.destroy();
    }
  });
});
