/**
 * `keel` as a real process for the server tests: its configuration on free
 * loopback ports, started through tsx from the sources, its stdout and
 * stderr kept, and waited for until its HTTP /ready answers 200.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../simulator/ports.js';

const run = promisify(execFile);

export const ROOT = resolve(import.meta.dirname, '../..');
export const MAIN = join(ROOT, 'src/cli/main.ts');

export interface Proc {
  child: ChildProcess;
  /** stdout and stderr so far, interleaved. */
  logs: () => string;
  exited: Promise<number | null>;
}

export function startProcess(args: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d));
  child.stderr!.on('data', (d: Buffer) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, logs: () => out, exited };
}

/** Until `url` answers 200; fails with the process's logs when it exits first or takes longer than `timeoutMs`. */
export async function waitReady(url: string, proc: Proc, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.child.exitCode !== null) throw new Error(`server exited early:\n${proc.logs()}`);
    try {
      if ((await fetch(url)).status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server not ready in ${timeoutMs} ms:\n${proc.logs()}`);
}

/** Runs `keel <args>` to completion; rejects (with code, stdout and stderr) on a non-zero exit. */
export function keel(args: string[], env: NodeJS.ProcessEnv): Promise<{ stdout: string; stderr: string }> {
  return run(process.execPath, ['--import', 'tsx', MAIN, ...args], { env });
}

export interface ServerSetup {
  /** <dir>/server.yaml */
  readonly config: string;
  /** The environment of the server and of its admin CLI (SoftHSM, PIN, admin socket). */
  readonly env: NodeJS.ProcessEnv;
  readonly nodePort: number;
  readonly httpPort: number;
  readonly socket: string;
  /** The HTTP /ready URL, for waitReady. */
  readonly readyUrl: string;
}

/**
 * Writes <dir>/server.yaml for trust domain example.org on free loopback
 * ports, data in <dir>/data, the admin socket in <dir>/admin, the CA on the
 * SoftHSM token (label keel, PIN from KEEL_TEST_PIN). `more` is the rest of
 * the `server:` map (store, attestation…), indented by two spaces.
 */
export async function writeServerConfig(dir: string, token: { module: string; conf: string; pin: string }, more: string): Promise<ServerSetup> {
  const nodePort = await freePort();
  const httpPort = await freePort();
  const socket = join(dir, 'admin', 'admin.sock');
  const config = join(dir, 'server.yaml');
  await writeFile(
    config,
    `server:
  trust_domain: example.org
  data_dir: ${join(dir, 'data')}
  listen:
    node_api: 127.0.0.1:${nodePort}
    http: 127.0.0.1:${httpPort}
    http_plaintext: true
    admin_socket: ${socket}
  hsm:
    module: ${token.module}
    token_label: keel
    pin_source: env:KEEL_TEST_PIN
  ca:
    ttl: 24h
${more}`,
  );
  const env = { ...process.env, SOFTHSM2_CONF: token.conf, KEEL_TEST_PIN: token.pin, KEEL_ADMIN_SOCKET: socket };
  return { config, env, nodePort, httpPort, socket, readyUrl: `http://127.0.0.1:${httpPort}/ready` };
}
