/**
 * The shipped swtpm-dev policy against a real swtpm: PCRs 0–7 read with
 * tpm2_pcrread pass it; after one tpm2_pcrextend into PCR 4 they do not.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { createPolicyFromMachine, evaluatePolicy, loadPolicy } from '../../src/policy/index.js';
import { POLICY_DIR } from './fixtures.js';

const run = promisify(execFile);

async function pcrread(tpm: Swtpm): Promise<Map<number, Buffer>> {
  const { stdout } = await run('tpm2_pcrread', ['sha256:0,1,2,3,4,5,6,7'], { env: tpm.env });
  const out = new Map<number, Buffer>();
  for (const line of stdout.split('\n')) {
    const p = /^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$/.exec(line);
    if (p) out.set(Number(p[1]), Buffer.from(p[2]!, 'hex'));
  }
  return out;
}

describe('swtpm-dev on swtpm', () => {
  let tpm: Swtpm;
  beforeAll(async () => {
    tpm = await startSwtpm();
  });
  afterAll(async () => {
    await tpm?.stop();
  });

  it('passes on a fresh swtpm and fails once PCR 4 is extended', async () => {
    const policy = loadPolicy(join(POLICY_DIR, 'swtpm-dev.yaml'));
    const fresh = await pcrread(tpm);
    expect(fresh.size).toBe(8);
    expect(evaluatePolicy(policy, { bank: 'sha256', pcrs: fresh })).toEqual({ pass: true, selectors: ['tpm:policy:swtpm-dev', 'tpm:platform:swtpm'] });
    // The generator on the same machine makes the same PCR assertions.
    expect(createPolicyFromMachine({ pcrValues: fresh, bank: 'sha256', name: 'swtpm-dev' }).policy.pcrs).toEqual(policy.pcrs);

    await run('tpm2_pcrextend', [`4:sha256=${'ab'.repeat(32)}`], { env: tpm.env });
    const r = evaluatePolicy(policy, { bank: 'sha256', pcrs: await pcrread(tpm) });
    expect(r.pass).toBe(false);
    if (!r.pass) expect(r.violations.map((v) => v.rule)).toEqual(['pcrs.4']);
  });
});
