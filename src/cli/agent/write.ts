/**
 * `keel agent api write`: keeps an X.509-SVID, its key and the bundles as
 * files in a directory for programs that cannot speak the Workload API (what
 * spiffe-helper does). It is an ordinary Workload API client: it streams
 * FetchX509SVID over the socket, writes a complete new file set on every
 * update (src/agent/files: a new generation directory, then one atomic swap
 * of the `current` symlink), then runs the update command and/or signals a
 * process. A broken stream is reopened with backoff; PermissionDenied is
 * retried too (an entry may appear later), InvalidArgument is not.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import * as grpc from '@grpc/grpc-js';
import { join } from 'node:path';
import { SvidFileSetError, SvidFileWriter, type SvidFileContent, type WriteResult } from '../../agent/files/index.js';
import { Backoff, formatDelay, type BackoffOptions } from '../../agent/manager/backoff.js';
import { createLogger, type Logger } from '../../log/index.js';
import { parseDerCertificates } from '../../spiffe/der.js';
import { ConfigError } from '../../config/index.js';
import { CliError, parseFlags, type Command } from '../command.js';
import { processIo, type CliIo } from '../admin/io.js';
import { interrupted } from './api.js';
import { describeRpcError, WorkloadApiClient, workloadTarget, type X509SvidMessage, type X509SvidResponse } from './workload-client.js';
import { resolveWriteOptions, type WriteFlags, type WriteOptions } from './write-config.js';

const certsOf = (der: Buffer): Buffer[] => parseDerCertificates(der, 1024).map((c) => c.raw);

/** The SVID the options ask for, out of one FetchX509SVID response. */
export function pickSvid(r: X509SvidResponse, o: Pick<WriteOptions, 'hint' | 'spiffeId'>): X509SvidMessage | undefined {
  if (o.hint !== undefined) return r.svids.find((s) => s.hint === o.hint);
  if (o.spiffeId !== undefined) return r.svids.find((s) => s.spiffe_id === o.spiffeId);
  return r.svids[0];
}

export function fileContentOf(s: X509SvidMessage, r: X509SvidResponse): SvidFileContent {
  const federated = new Map<string, Buffer[]>();
  for (const [td, der] of Object.entries(r.federated_bundles ?? {})) federated.set(td.replace(/^spiffe:\/\//, ''), certsOf(der));
  return { chainDer: certsOf(s.x509_svid), keyPkcs8Der: s.x509_svid_key, bundleDer: certsOf(s.bundle), federated };
}

/** Runs argv without a shell; resolves with a line for the log, never rejects. */
function runCommand(argv: readonly string[], timeoutMs: number, env: NodeJS.ProcessEnv): Promise<{ ok: boolean; detail: string }> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: timeoutMs, env, maxBuffer: 1 << 20, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (!err) return resolve({ ok: true, detail: 'exit 0' });
      const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean; signal?: string };
      const why = e.killed ? `killed after ${timeoutMs} ms` : typeof e.code === 'number' ? `exit ${e.code}` : e.signal ? `signal ${e.signal}` : (e.message ?? String(e));
      resolve({ ok: false, detail: `${why}${stderr ? `: ${String(stderr).trim().slice(0, 500)}` : stdout ? `: ${String(stdout).trim().slice(0, 200)}` : ''}` });
    });
  });
}

async function signalPidFile(pidFile: string, signal: NodeJS.Signals): Promise<{ ok: boolean; detail: string }> {
  let text: string;
  try {
    text = (await readFile(pidFile, 'utf8')).trim();
  } catch (e) {
    return { ok: false, detail: `cannot read ${pidFile}: ${(e as Error).message}` };
  }
  if (!/^\d{1,10}$/.test(text) || Number(text) < 2) return { ok: false, detail: `${pidFile} does not hold a process id: ${JSON.stringify(text.slice(0, 40))}` };
  try {
    process.kill(Number(text), signal);
    return { ok: true, detail: `${signal} sent to ${text}` };
  } catch (e) {
    return { ok: false, detail: `${signal} to ${text}: ${(e as Error).message}` };
  }
}

export interface FilesHelperRun {
  /** Resolves when the helper should stop (SIGINT/SIGTERM in the CLI). */
  readonly stop: Promise<void>;
  readonly log: Logger;
  readonly backoff?: BackoffOptions;
  /** Called after each update is handled (tests). */
  readonly onWritten?: (r: WriteResult) => void;
}

/** The helper loop; resolves with the exit code. */
export async function runFilesHelper(o: WriteOptions, run: FilesHelperRun): Promise<number> {
  const { log } = run;
  const writer = new SvidFileWriter(o.dir, o.layout);
  const client = new WorkloadApiClient(workloadTarget(o.socket));
  const backoff = new Backoff(run.backoff ?? { initialMs: 500, maxMs: 30_000 });
  let stopped = false;
  let call: grpc.ClientReadableStream<X509SvidResponse> | undefined;
  let retryTimer: NodeJS.Timeout | undefined;
  let finish!: (code: number) => void;
  const done = new Promise<number>((r) => (finish = r));

  // Updates are handled one at a time; one arriving meanwhile waits, and only the latest waiting one is written.
  let pending: X509SvidResponse | undefined;
  let working = false;
  const handle = async (): Promise<void> => {
    if (working) return;
    working = true;
    try {
      while (pending && !stopped) {
        const r = pending;
        pending = undefined;
        const svid = pickSvid(r, o);
        if (!svid) {
          log.error('the update has no SVID to write; the files stay as they are', {
            wanted: o.hint !== undefined ? { hint: o.hint } : o.spiffeId !== undefined ? { spiffe_id: o.spiffeId } : 'any',
            have: r.svids.map((s) => ({ spiffe_id: s.spiffe_id, hint: s.hint })),
          });
          continue;
        }
        let result: WriteResult;
        try {
          result = await writer.write(fileContentOf(svid, r));
        } catch (e) {
          const problem = e instanceof SvidFileSetError ? e.problem : 'io';
          log.error('the SVID files were not written; the previous set stays in place', { problem, error: (e as Error).message, dir: o.dir });
          if (o.once) stop(1);
          continue;
        }
        if (!result.changed) {
          log.debug('the update matches the files already written', { generation: result.generation });
        } else {
          log.info('SVID files written', { dir: o.dir, generation: result.generation, spiffe_id: svid.spiffe_id, serial: result.serial, files: result.files });
          await hooks(svid, result);
        }
        run.onWritten?.(result);
        if (o.once) stop(0);
      }
    } finally {
      working = false;
    }
  };

  const hooks = async (svid: X509SvidMessage, result: WriteResult): Promise<void> => {
    if (o.onUpdate) {
      const env = {
        ...process.env,
        KEEL_SVID_DIR: o.dir,
        KEEL_SVID_GENERATION: join(o.dir, result.generation),
        KEEL_SPIFFE_ID: svid.spiffe_id,
        KEEL_SVID_SERIAL: result.serial,
      };
      const r = await runCommand(o.onUpdate, o.commandTimeoutMs, env);
      (r.ok ? log.info : log.error).call(log, r.ok ? 'update command ran' : 'update command failed', { command: o.onUpdate, result: r.detail });
    }
    if (o.signal) {
      const r = await signalPidFile(o.signal.pidFile, o.signal.name);
      (r.ok ? log.info : log.error).call(log, r.ok ? 'process signalled' : 'signalling the process failed', { pid_file: o.signal.pidFile, result: r.detail });
    }
  };

  const connect = (): void => {
    if (stopped) return;
    const c = client.watchX509Svids();
    call = c;
    let failed = false;
    const retry = (why: string, code?: number): void => {
      if (failed || stopped || call !== c) return;
      failed = true;
      call = undefined;
      if (code === grpc.status.INVALID_ARGUMENT) {
        log.error('the Workload API refused the request; not retrying', { error: why });
        stop(1);
        return;
      }
      const delay = backoff.next();
      log.warn(`Workload API stream ended; reconnecting in ${formatDelay(delay)}`, { error: why, attempt: backoff.attempts });
      retryTimer = setTimeout(connect, delay);
    };
    c.on('data', (r: X509SvidResponse) => {
      if (call !== c) return;
      backoff.reset();
      pending = r;
      void handle();
    });
    c.on('error', (e: grpc.ServiceError) => retry(describeRpcError(e), e.code));
    c.on('end', () => retry('the stream ended'));
  };

  const stop = (code: number): void => {
    if (stopped) return;
    stopped = true;
    clearTimeout(retryTimer);
    call?.cancel();
    finish(code);
  };

  void run.stop.then(() => stop(0));
  log.info('keeping SVID files', { dir: o.dir, socket: client.target });
  connect();
  const code = await done;
  // Let a write in progress finish, so the directory is never left mid-update by us.
  while (working) await new Promise((r) => setTimeout(r, 10));
  client.close();
  return code;
}

export function writeCommand(io: CliIo = processIo, stopOn: () => Promise<void> = interrupted): Command {
  return {
    usage:
      '--dir DIR [--config FILE] [--socket PATH] [--hint H | --spiffe-id ID] [--svid-file-name svid.pem] [--key-file-name svid.key] ' +
      '[--bundle-file-name bundle.pem] [--federated-file-name federated-{trust_domain}.pem] [--include-federated] [--cert-mode 0644] [--key-mode 0600] ' +
      '[--owner USER[:GROUP]] [--on-update CMD [--on-update-shell]] [--command-timeout 30s] [--signal HUP --pid-file PATH] [--once]',
    description:
      'Keeps the X.509-SVID (chain PEM), its key (PKCS#8 PEM), the bundle and federated bundles in DIR, replaced atomically as one set on every rotation ' +
      '(DIR/current -> a new generation directory; DIR/svid.pem etc. link through it), then runs the update command (without a shell unless --on-update-shell) ' +
      'or sends the signal. Runs until interrupted; --once writes the first set and exits.',
    async run(argv) {
      const { values } = parseFlags(argv, {
        config: { type: 'string' },
        socket: { type: 'string' },
        dir: { type: 'string' },
        hint: { type: 'string' },
        'spiffe-id': { type: 'string' },
        'svid-file-name': { type: 'string' },
        'key-file-name': { type: 'string' },
        'bundle-file-name': { type: 'string' },
        'federated-file-name': { type: 'string' },
        'include-federated': { type: 'boolean' },
        'cert-mode': { type: 'string' },
        'key-mode': { type: 'string' },
        owner: { type: 'string' },
        'on-update': { type: 'string' },
        'on-update-shell': { type: 'boolean' },
        'command-timeout': { type: 'string' },
        signal: { type: 'string' },
        'pid-file': { type: 'string' },
        once: { type: 'boolean' },
      });
      let o: WriteOptions;
      try {
        o = resolveWriteOptions(values as WriteFlags);
      } catch (e) {
        if (e instanceof ConfigError) throw new CliError(e.message, 2);
        throw e;
      }
      const log = createLogger({ level: 'info', write: (l) => io.err(l) }, { service: 'keel-agent-api-write' });
      try {
        return await runFilesHelper(o, { stop: stopOn(), log });
      } catch (e) {
        if (e instanceof SvidFileSetError) throw new CliError(e.message, 2);
        throw e;
      }
    },
  };
}
