/**
 * Creates a SoftHSM v2 token in its own temp directory for a test or the demo.
 * SOFTHSM2_CONF is per process in SoftHSM, so the token's config path is
 * returned and the caller sets it before the PKCS#11 module is initialised.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';

const run = promisify(execFile);

export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface SoftHsmToken {
  readonly dir: string;
  readonly tokenDir: string;
  /** Path to the softhsm2.conf for this token: set SOFTHSM2_CONF to it. */
  readonly conf: string;
  readonly module: string;
  readonly label: string;
  readonly pin: string;
  readonly soPin: string;
  /** Environment for child processes (softhsm2-util, pkcs11-tool, keel). */
  readonly env: NodeJS.ProcessEnv;
  destroy(): Promise<void>;
}

export async function createSoftHsmToken(opts: { label?: string; pin?: string } = {}): Promise<SoftHsmToken> {
  const dir = await mkdtemp(join(tmpdir(), 'keel-softhsm-'));
  const tokenDir = join(dir, 'tokens');
  await mkdir(tokenDir, { recursive: true });
  const conf = join(dir, 'softhsm2.conf');
  await writeFile(
    conf,
    [`directories.tokendir = ${tokenDir}`, 'objectstore.backend = file', 'log.level = ERROR', 'slots.removable = false', ''].join('\n'),
  );
  const label = opts.label ?? 'keel';
  const pin = opts.pin ?? randomBytes(8).toString('hex');
  const soPin = randomBytes(8).toString('hex');
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  await run('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', soPin], { env });
  return {
    dir,
    tokenDir,
    conf,
    module: SOFTHSM_MODULE,
    label,
    pin,
    soPin,
    env,
    async destroy() {
      await rm(dir, { recursive: true, force: true });
    },
  };
}
