/**
 * Starts a software TPM (swtpm) for a test or the demo, each in its own temp
 * directory with its own local manufacturer CA, on its own port pair.
 * Nothing under /etc or /var/lib is read or written.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, readFile, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePortPair } from './ports.js';

const run = promisify(execFile);

export interface SwtpmOptions {
  /** PCR banks to activate; swtpm's default is sha256 only. */
  pcrBanks?: string[];
  /**
   * Run an H-CRTM sequence with these bytes (a string as UTF-8) at every
   * launch, as a platform with a hardware CRTM does at every power-on: start,
   * restart() and resume() alike, since each is a TPM reset. The TPM then
   * starts PCR 0 at 00…04 and extends H(data) into it in every active bank,
   * before TPM2_Startup: PCR 0 = H(00…04 || H(data)).
   */
  hcrtm?: Buffer | string;
}

export interface Swtpm {
  /** TCTI configuration string for tpm2-tss / tpm2-tools. */
  readonly tcti: string;
  readonly host: string;
  readonly port: number;
  /** Directory holding state, the local CA and logs. Removed by stop() unless kept. */
  readonly dir: string;
  readonly stateDir: string;
  /** Manufacturer CA certificates (PEM): the local CA root first, then its issuing CA. */
  readonly manufacturerCaPems: string[];
  /** Environment for tpm2-tools commands pointed at this TPM. */
  readonly env: NodeJS.ProcessEnv;
  /** Stops swtpm (and keeps the state dir if asked, for a restart). */
  stop(opts?: { keepState?: boolean }): Promise<void>;
  /** Stops and starts swtpm on the same state: a TPM reset (power cycle). May move to another port. */
  restart(): Promise<void>;
  /**
   * Takes the TPM away (the process stops, its state stays) without giving up
   * its ports: resume() brings it back on the same ports, so a TCTI opened
   * before reaches it again. The TPM is reset in between, as by a power cycle:
   * transient objects and sessions are gone, persistent ones and NV stay.
   */
  halt(): Promise<void>;
  resume(): Promise<void>;
}

export class SimulatorError extends Error {
  override readonly name = 'SimulatorError';
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
}

async function writeConfig(dir: string): Promise<string> {
  const ca = join(dir, 'localca');
  await mkdir(ca, { recursive: true });
  await writeFile(
    join(dir, 'swtpm-localca.conf'),
    [
      `statedir = ${ca}`,
      `signingkey = ${join(ca, 'signkey.pem')}`,
      `issuercert = ${join(ca, 'issuercert.pem')}`,
      `certserial = ${join(ca, 'certserial')}`,
      '',
    ].join('\n'),
  );
  await writeFile(
    join(dir, 'swtpm-localca.options'),
    ['--platform-manufacturer keel-sim', '--platform-version 2.1', '--platform-model swtpm', ''].join('\n'),
  );
  const setupConf = join(dir, 'swtpm_setup.conf');
  await writeFile(
    setupConf,
    [
      'create_certs_tool = /usr/bin/swtpm_localca',
      `create_certs_tool_config = ${join(dir, 'swtpm-localca.conf')}`,
      `create_certs_tool_options = ${join(dir, 'swtpm-localca.options')}`,
      '',
    ].join('\n'),
  );
  return setupConf;
}

function waitForPort(host: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const s = connect({ host, port });
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) reject(new SimulatorError(`swtpm did not listen on ${host}:${port}`));
        else setTimeout(attempt, 20);
      });
    };
    attempt();
  });
}

/** The H-CRTM sequence with `data` (read by swtpm_ioctl from stdin), then TPM2_Startup(CLEAR). */
async function runHcrtm(host: string, ctrlPort: number, data: Buffer, env: NodeJS.ProcessEnv): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const c = spawn('swtpm_ioctl', ['--tcp', `${host}:${ctrlPort}`, '-h', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    c.once('error', (e) => reject(new SimulatorError(`swtpm_ioctl -h: ${e.message}`)));
    c.once('exit', (code) => (code === 0 ? resolve() : reject(new SimulatorError(`swtpm_ioctl -h exited (${code}): ${stderr.trim()}`))));
    c.stdin?.end(data);
  });
  try {
    await run('tpm2_startup', ['-c'], { env });
  } catch (e) {
    throw new SimulatorError(`tpm2_startup -c after the H-CRTM sequence failed: ${(e as Error).message}`);
  }
}

/** Creates and starts a fresh swtpm with RSA-2048 and ECC EKs and their certificates. */
export async function startSwtpm(opts: SwtpmOptions = {}): Promise<Swtpm> {
  installExitHook();
  const dir = await mkdtemp(join(tmpdir(), 'keel-swtpm-'));
  // A TPM reset on the same state is restart(); every start is a new TPM.
  const stateDir = join(dir, 'state');
  await mkdir(stateDir, { recursive: true });
  const setupConf = await writeConfig(dir);
  const banks = (opts.pcrBanks ?? ['sha1', 'sha256']).join(',');
  try {
    await run('swtpm_setup', [
      '--tpm2', '--tpmstate', stateDir, '--createek', '--decryption',
      '--create-ek-cert', '--create-platform-cert', '--pcr-banks', banks,
      '--config', setupConf, '--logfile', join(dir, 'setup.log'),
    ]);
  } catch (e) {
    const log = await readFile(join(dir, 'setup.log'), 'utf8').catch(() => '');
    await rm(dir, { recursive: true, force: true });
    throw new SimulatorError(`swtpm_setup failed: ${(e as Error).message}\n${log}`);
  }
  const ca = join(dir, 'localca');
  const manufacturerCaPems = [
    await readFile(join(ca, 'swtpm-localca-rootca-cert.pem'), 'utf8'),
    await readFile(join(ca, 'issuercert.pem'), 'utf8'),
  ];

  const host = '127.0.0.1';
  let child: ChildProcess | undefined;
  let port = 0;
  const hcrtm = opts.hcrtm === undefined ? undefined : Buffer.from(opts.hcrtm);
  const toolsEnv = (): NodeJS.ProcessEnv => ({ ...process.env, TPM2TOOLS_TCTI: `swtpm:host=${host},port=${port}` });
  // The H-CRTM sequence (_TPM_Hash_Start/Data/End, sent by swtpm_ioctl -h on
  // the control channel) is only accepted before TPM2_Startup: such a TPM is
  // launched without swtpm's startup-clear flag and started afterwards.
  const flags = hcrtm ? 'not-need-init' : 'not-need-init,startup-clear';

  const launch = async (samePort = false): Promise<void> => {
    let lastErr: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (!samePort || port === 0) port = await freePortPair();
      else if (attempt > 0) await new Promise((r) => setTimeout(r, 200)); // the old listener may still be closing
      const c = spawn(
        'swtpm',
        [
          'socket', '--tpm2', '--tpmstate', `dir=${stateDir}`,
          '--server', `type=tcp,port=${port},bindaddr=${host}`,
          '--ctrl', `type=tcp,port=${port + 1},bindaddr=${host}`,
          '--flags', flags,
          '--log', `file=${join(dir, 'swtpm.log')},level=1`,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let stderr = '';
      c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<never>((_, reject) =>
        c.once('exit', (code) => reject(new SimulatorError(`swtpm exited (${code}): ${stderr.trim()}`))),
      );
      try {
        await Promise.race([waitForPort(host, port, 5000), exited]);
        await Promise.race([waitForPort(host, port + 1, 5000), exited]);
        if (hcrtm) await Promise.race([runHcrtm(host, port + 1, hcrtm, toolsEnv()), exited]);
        exited.catch(() => undefined);
        child = c;
        live.add(c);
        c.once('exit', () => live.delete(c));
        return;
      } catch (e) {
        lastErr = e;
        c.kill('SIGKILL');
      }
    }
    throw lastErr;
  };

  const halt = async (): Promise<void> => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null) return;
    const gone = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 2000);
    await gone;
    clearTimeout(t);
  };

  await launch();

  const sim: Swtpm = {
    get tcti() {
      return `swtpm:host=${host},port=${port}`;
    },
    host,
    get port() {
      return port;
    },
    dir,
    stateDir,
    manufacturerCaPems,
    get env() {
      return { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=${host},port=${port}` };
    },
    async stop(o = {}) {
      await halt();
      if (!o.keepState) await rm(dir, { recursive: true, force: true });
    },
    async restart() {
      await halt();
      await launch();
    },
    async halt() {
      await halt();
    },
    async resume() {
      if (child) return;
      await launch(true);
    },
  } as Swtpm;
  return sim;
}
