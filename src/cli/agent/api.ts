/**
 * `keel agent api …`: the Workload API from the command line, for people and
 * for programs that cannot speak it (`fetch x509 --write DIR` leaves PEM files).
 */
import { derToPem } from '../../spiffe/der.js';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { chmod, mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseDerCertificates } from '../../spiffe/index.js';
import { CliError, parseFlags, type Command } from '../command.js';
import { processIo, type CliIo } from '../admin/io.js';
import { describeRpcError, structToJson, WorkloadApiClient, workloadTarget, type X509SvidMessage, type X509SvidResponse } from './workload-client.js';

const TIMEOUT_MS = 10_000;

export function timeoutOf(v: string | undefined, defaultMs = TIMEOUT_MS): number {
  if (v === undefined) return defaultMs;
  const m = /^(\d{1,6})(ms|s)$/.exec(v);
  if (!m) throw new CliError(`--timeout: expected a duration like 5s or 500ms, got ${JSON.stringify(v)}`, 2);
  return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
}

function pemOf(ders: readonly Buffer[], label = 'CERTIFICATE'): string {
  return ders.map((d) => derToPem(d, label)).join('');
}

function certs(der: Buffer): Buffer[] {
  return parseDerCertificates(der, 1024).map((c) => c.raw);
}

async function withClient<T>(socket: string | undefined, fn: (c: WorkloadApiClient) => Promise<T>): Promise<T> {
  const client = new WorkloadApiClient(workloadTarget(socket));
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

function describeSvid(s: X509SvidMessage): string {
  const leaf = new X509Certificate(certs(s.x509_svid)[0]!);
  return `SPIFFE ID:     ${s.spiffe_id}\n${s.hint ? `Hint:          ${s.hint}\n` : ''}Expires:       ${new Date(leaf.validTo).toISOString()}\nSerial:        ${leaf.serialNumber.toLowerCase()}\nChain length:  ${certs(s.x509_svid).length}\nBundle CAs:    ${certs(s.bundle).length}`;
}

/** Writes a file with `mode` via a temporary name, so a reader never sees half of it. */
async function put(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data, { mode });
  await chmod(tmp, mode);
  await rename(tmp, path);
}

/** svid.pem (leaf first), svid.key (PKCS#8, 0600), bundle.pem; a second SVID gets svid.1.pem and so on. */
async function writeSvids(dir: string, r: X509SvidResponse): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const written: string[] = [];
  for (const [i, s] of r.svids.entries()) {
    const suffix = i === 0 ? '' : `.${i}`;
    const keyPem = createPrivateKey({ key: s.x509_svid_key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;
    await put(join(dir, `svid${suffix}.pem`), pemOf(certs(s.x509_svid)), 0o644);
    await put(join(dir, `svid${suffix}.key`), keyPem, 0o600);
    await put(join(dir, `bundle${suffix}.pem`), pemOf(certs(s.bundle)), 0o644);
    written.push(`svid${suffix}.pem`, `svid${suffix}.key`, `bundle${suffix}.pem`);
  }
  for (const [td, der] of Object.entries(r.federated_bundles ?? {})) {
    const name = `federated-${td.replace(/^spiffe:\/\//, '').replace(/[^a-z0-9._-]/g, '_')}.pem`;
    await put(join(dir, name), pemOf(certs(der)), 0o644);
    written.push(name);
  }
  return written;
}

export function fetchX509Command(io: CliIo = processIo): Command {
  return {
    usage: '[--socket PATH|unix:///PATH] [--write DIR] [--timeout 10s]',
    description: 'Fetches the X.509-SVIDs of this process from the Workload API and prints them; --write DIR also writes svid.pem, svid.key (0600) and bundle.pem.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { socket: { type: 'string' }, write: { type: 'string' }, timeout: { type: 'string' } });
      const timeout = timeoutOf(v.timeout);
      let r: X509SvidResponse;
      try {
        r = await withClient(v.socket, (c) => c.fetchX509Svids(timeout));
      } catch (e) {
        if (e instanceof CliError) throw e;
        throw new CliError(`fetching X.509-SVIDs failed: ${describeRpcError(e)}`);
      }
      io.out(`Received ${r.svids.length} SVID${r.svids.length === 1 ? '' : 's'}`);
      for (const s of r.svids) io.out(`\n${describeSvid(s)}`);
      if (v.write) {
        const files = await writeSvids(v.write, r);
        io.out(`\nWrote ${files.join(', ')} to ${v.write}`);
      }
      return 0;
    },
  };
}

export function fetchJwtCommand(io: CliIo = processIo): Command {
  return {
    usage: '--audience AUD [--audience AUD …] [--spiffe-id ID] [--socket PATH] [--timeout 10s]',
    description: 'Fetches JWT-SVIDs for the audience from the Workload API and prints one per line: token, then the SPIFFE ID.',
    async run(argv) {
      const { values: v } = parseFlags(argv, {
        audience: { type: 'string', multiple: true },
        'spiffe-id': { type: 'string' },
        socket: { type: 'string' },
        timeout: { type: 'string' },
      });
      const audience = v.audience ?? [];
      if (audience.length === 0 || audience.some((a) => a.length === 0)) throw new CliError('--audience is required (and not empty)', 2);
      const timeout = timeoutOf(v.timeout);
      try {
        const r = await withClient(v.socket, (c) => c.fetchJwtSvids(audience, v['spiffe-id'], timeout));
        for (const s of r.svids) io.out(`${s.svid}\n${s.spiffe_id}`);
        return 0;
      } catch (e) {
        throw new CliError(`fetching JWT-SVIDs failed: ${describeRpcError(e)}`);
      }
    },
  };
}

export function validateJwtCommand(io: CliIo = processIo): Command {
  return {
    usage: '--audience AUD --svid TOKEN [--socket PATH] [--timeout 10s]',
    description: 'Asks the agent to validate a JWT-SVID for the audience; prints the SPIFFE ID and the claims, exits 1 when it is not valid.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { audience: { type: 'string' }, svid: { type: 'string' }, socket: { type: 'string' }, timeout: { type: 'string' } });
      if (!v.audience) throw new CliError('--audience is required', 2);
      if (!v.svid) throw new CliError('--svid is required', 2);
      const timeout = timeoutOf(v.timeout);
      try {
        const r = await withClient(v.socket, (c) => c.validateJwtSvid(v.audience!, v.svid!, timeout));
        io.out(`SVID is valid.\nSPIFFE ID: ${r.spiffe_id}\nClaims:    ${JSON.stringify(structToJson(r.claims))}`);
        return 0;
      } catch (e) {
        io.err(`SVID is not valid: ${describeRpcError(e)}`);
        return 1;
      }
    },
  };
}

export function watchCommand(io: CliIo = processIo, stopOn: () => Promise<void> = interrupted): Command {
  return {
    usage: '[--socket PATH] [--updates N]',
    description: 'Prints a summary of every X.509-SVID update the Workload API streams, until interrupted (or after N updates).',
    async run(argv) {
      const { values: v } = parseFlags(argv, { socket: { type: 'string' }, updates: { type: 'string' } });
      const max = v.updates === undefined ? Infinity : Number(v.updates);
      if (!(max >= 1) || (max !== Infinity && !Number.isInteger(max))) throw new CliError('--updates: expected a positive integer', 2);
      const client = new WorkloadApiClient(workloadTarget(v.socket));
      const call = client.watchX509Svids();
      let seen = 0;
      try {
        return await new Promise<number>((resolve) => {
          call.on('data', (r: X509SvidResponse) => {
            seen++;
            const ids = r.svids.map((s) => `${s.spiffe_id} (expires ${new Date(new X509Certificate(certs(s.x509_svid)[0]!).validTo).toISOString()})`);
            io.out(`${new Date().toISOString()} update ${seen}: ${ids.join(', ') || 'no SVIDs'}`);
            if (seen >= max) {
              call.cancel();
              resolve(0);
            }
          });
          call.on('error', (e) => {
            if (seen >= max) return;
            io.err(`watch ended: ${describeRpcError(e)}`);
            resolve(1);
          });
          call.on('end', () => resolve(seen >= max ? 0 : 1));
          void stopOn().then(() => {
            call.cancel();
            resolve(0);
          });
        });
      } finally {
        client.close();
      }
    },
  };
}

/** Resolves at the first SIGINT or SIGTERM. */
export function interrupted(): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}
