import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { main } from '../../src/cli/main.js';
import { loadPolicy } from '../../src/policy/index.js';

const run = promisify(execFile);

describe('keel policy create-from-machine / check, on swtpm', () => {
  let sim: Swtpm;
  let dir: string;
  beforeAll(async () => {
    sim = await startSwtpm();
    dir = await mkdtemp(join(tmpdir(), 'keel-cli-policy-'));
    // Give PCR 4 a non-zero value so the policy pins something real.
    await run('tpm2_pcrextend', [`4:sha256=${'ab'.repeat(32)}`], { env: sim.env });
  });
  afterAll(async () => {
    await sim?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('writes a policy this machine passes, and check fails once a PCR moves', async () => {
    const out = join(dir, 'this-machine.yaml');
    const err = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const log = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      expect(await main(['policy', 'create-from-machine', '--name', 'this-machine', '--tcti', sim.tcti, '--no-event-log', '-o', out])).toBe(0);
      const policy = loadPolicy(out);
      expect(policy.name).toBe('this-machine');
      // PCR 4 = SHA-256(zeros || ab…ab): the value the TPM holds, pinned.
      const pcr4 = createHash('sha256').update(Buffer.alloc(32)).update(Buffer.from('ab'.repeat(32), 'hex')).digest('hex');
      expect(policy.pcrs.get(4)).toEqual([pcr4]);
      expect(policy.pcrs.get(0)).toEqual(['00'.repeat(32)]);

      expect(await main(['policy', 'check', '--policy', out, '--tcti', sim.tcti, '--no-event-log'])).toBe(0);
      expect(log.mock.calls.flat().join('\n')).toContain('PASS  this-machine');

      await run('tpm2_pcrextend', [`4:sha256=${'cd'.repeat(32)}`], { env: sim.env });
      log.mockClear();
      expect(await main(['policy', 'check', '--policy', out, '--tcti', sim.tcti, '--no-event-log'])).toBe(1);
      const printed = log.mock.calls.flat().join('\n');
      expect(printed).toContain('FAIL  this-machine');
      expect(printed).toMatch(/pcrs\.4/);
    } finally {
      err.mockRestore();
      log.mockRestore();
    }
  });

  it('refuses bad flags with a usage error', async () => {
    const err = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    try {
      expect(await main(['policy', 'create-from-machine', '--tcti', sim.tcti])).toBe(2);
      expect(await main(['policy', 'create-from-machine', '--name', 'x', '--pcrs', '3-99', '--tcti', sim.tcti])).toBe(2);
      expect(await main(['policy', 'check', '--tcti', sim.tcti])).toBe(2);
      expect(err.mock.calls.flat().join('\n')).toMatch(/--name is required/);
    } finally {
      err.mockRestore();
    }
  });
});
