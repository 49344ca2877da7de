/** `keel bundle show|list|set|delete`: the own bundle and federated ones, as PEM (default) or SPIFFE JWKS. */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import type { Command } from '../command.js';
import { CliError, parseFlags } from '../command.js';
import { bundleFromJwks, bundleToJwksJson, TrustBundle } from '../../spiffe/bundle.js';
import { clientFor, COMMON_FLAGS, COMMON_USAGE, enc, required, usageError } from './common.js';
import { processIo, type CliIo } from './io.js';

type Format = 'pem' | 'spiffe';

function formatOf(v: { format?: string | undefined; json?: boolean | undefined }): Format {
  if (v.json) return 'spiffe';
  const f = v.format ?? 'pem';
  if (f !== 'pem' && f !== 'spiffe') throw usageError(`--format must be pem or spiffe, got ${JSON.stringify(f)}`);
  return f;
}

function pemOf(jwksText: string, td: string): string {
  const b = bundleFromJwks(td, jwksText);
  return b.x509Authorities.map((c) => c.toString().trimEnd()).join('\n') + (b.x509Authorities.length ? '\n' : '');
}

/** PEM certificates → a bundle of X.509 authorities. */
function jwksFromPem(td: string, pem: string): string {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new CliError('no PEM certificate found in the input');
  let certs: X509Certificate[];
  try {
    certs = blocks.map((b) => new X509Certificate(b));
  } catch (e) {
    throw new CliError(`a PEM certificate does not parse: ${(e as Error).message}`);
  }
  return bundleToJwksJson(TrustBundle.create({ trustDomain: td, x509Authorities: certs }));
}

const banner = (td: string) => `${'*'.repeat(40)}\n* ${td}\n${'*'.repeat(40)}`;

export function bundleCommands(io: CliIo = processIo): Record<'show' | 'list' | 'set' | 'delete', Command> {
  const show: Command = {
    usage: `[--format pem|spiffe] ${COMMON_USAGE}`,
    description: "Shows this trust domain's bundle: its X.509 authorities as PEM, or the whole SPIFFE bundle (JWKS) with --format spiffe / --json.",
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, format: { type: 'string' } });
      const format = formatOf(v);
      const r = await clientFor(v).send('GET', '/v1/bundle');
      if (format === 'spiffe') {
        io.out(JSON.stringify(JSON.parse(r.text), null, 2));
      } else {
        // The JWKS does not name its trust domain, and the authorities parse the same under any name.
        io.out(pemOf(r.text, 'bundle.invalid'));
      }
      return 0;
    },
  };

  const list: Command = {
    usage: `[--id TRUST_DOMAIN] [--format pem|spiffe] ${COMMON_USAGE}`,
    description: 'Lists federated bundles (or shows the one of --id).',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, id: { type: 'string' }, format: { type: 'string' } });
      const format = formatOf(v);
      const client = clientFor(v);
      const all = (await client.json<{ bundles: { trustDomain: string; bundle: unknown }[] }>('GET', '/v1/bundles/federated')).bundles;
      const wanted = v.id === undefined ? all : all.filter((b) => b.trustDomain === v.id!.replace(/^spiffe:\/\//, ''));
      if (v.id !== undefined && wanted.length === 0) throw new CliError(`no federated bundle for ${v.id}`);
      if (v.json) {
        io.out(JSON.stringify({ bundles: wanted }, null, 2));
      } else if (format === 'spiffe') {
        io.out(wanted.map((b) => `${banner(b.trustDomain)}\n${JSON.stringify(b.bundle, null, 2)}\n`).join('\n'));
      } else {
        io.out(wanted.map((b) => `${banner(b.trustDomain)}\n${pemOf(JSON.stringify(b.bundle), b.trustDomain)}`).join('\n') || 'No federated bundles\n');
      }
      return 0;
    },
  };

  const set: Command = {
    usage: `--id TRUST_DOMAIN [--path FILE] [--format pem|spiffe] ${COMMON_USAGE}`,
    description: 'Sets the bundle of a federated trust domain from a file (or standard input): PEM certificates (default) or a SPIFFE bundle.',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, id: { type: 'string' }, path: { type: 'string' }, format: { type: 'string' } });
      const td = required(v.id, 'id').replace(/^spiffe:\/\//, '');
      const format = v.format === undefined ? 'pem' : formatOf({ format: v.format });
      let text: string;
      try {
        text = v.path !== undefined ? readFileSync(v.path, 'utf8') : await io.readStdin();
      } catch (e) {
        throw new CliError(`--path ${v.path}: ${(e as Error).message}`);
      }
      const body = format === 'pem' ? jwksFromPem(td, text) : text;
      const r = await clientFor(v).json<{ trustDomain: string }>('PUT', `/v1/bundles/federated/${enc(td)}`, body);
      io.out(v.json ? JSON.stringify(r, null, 2) : `Bundle set for ${r.trustDomain}`);
      return 0;
    },
  };

  const del: Command = {
    usage: `--id TRUST_DOMAIN ${COMMON_USAGE}`,
    description: 'Deletes the bundle of a federated trust domain (refused while entries federate with it).',
    async run(argv) {
      const { values: v } = parseFlags(argv, { ...COMMON_FLAGS, id: { type: 'string' } });
      const td = required(v.id, 'id').replace(/^spiffe:\/\//, '');
      await clientFor(v).send('DELETE', `/v1/bundles/federated/${enc(td)}`);
      io.out(v.json ? JSON.stringify({ deleted: td }) : `Bundle deleted for ${td}`);
      return 0;
    },
  };

  return { show, list, set, delete: del };
}
