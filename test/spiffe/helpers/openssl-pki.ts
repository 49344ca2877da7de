/**
 * Test certificates made by the openssl CLI (an implementation independent of
 * the verifier under test), each SVID breaking exactly one X509-SVID rule.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Issued {
  readonly name: string;
  readonly pem: string;
  readonly path: string;
  readonly keyPath: string;
  readonly cert: X509Certificate;
}

export class OpensslPki {
  readonly dir = mkdtempSync(join(tmpdir(), 'keel-spiffe-pki-'));
  #serial = 1;

  run(args: string[]): string {
    return execFileSync('openssl', args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString('utf8');
  }

  /** openssl verify; returns true on "OK". */
  verify(root: Issued, untrusted: readonly Issued[], leaf: Issued, extra: string[] = []): boolean {
    const args = ['verify', '-CAfile', root.path, ...extra];
    if (untrusted.length > 0) {
      const bundle = join(this.dir, `untrusted-${this.#serial++}.pem`);
      writeFileSync(bundle, untrusted.map((c) => c.pem).join(''));
      args.push('-untrusted', bundle);
    }
    args.push(leaf.path);
    try {
      return this.run(args).includes(': OK');
    } catch {
      return false;
    }
  }

  key(name: string, kind: 'ec' | 'rsa' = 'ec'): string {
    const path = join(this.dir, `${name}.key`);
    if (kind === 'ec') this.run(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', path]);
    else this.run(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', path]);
    return path;
  }

  /** A self-signed root with the given v3 extension lines. */
  root(name: string, subject: string, ext: string, kind: 'ec' | 'rsa' = 'ec', days = 3650): Issued {
    const keyPath = this.key(name, kind);
    const cnf = this.#writeCnf(name, ext);
    const path = join(this.dir, `${name}.pem`);
    this.run(['req', '-x509', '-new', '-key', keyPath, '-subj', subject, '-days', String(days), '-config', cnf, '-extensions', 'v3', '-out', path, '-sha256']);
    return this.#load(name, path, keyPath);
  }

  /** A certificate signed by `issuer`, with exactly the given v3 extension lines. */
  issue(name: string, issuer: Issued, subject: string, ext: string, days = 30, kind: 'ec' | 'rsa' = 'ec'): Issued {
    const keyPath = this.key(name, kind);
    const csr = join(this.dir, `${name}.csr`);
    const cnf = this.#writeCnf(name, ext);
    this.run(['req', '-new', '-key', keyPath, '-subj', subject, '-config', cnf, '-out', csr]);
    const path = join(this.dir, `${name}.pem`);
    this.run([
      'x509', '-req', '-in', csr, '-CA', issuer.path, '-CAkey', issuer.keyPath, '-set_serial', String(this.#serial++),
      '-days', String(days), '-extfile', cnf, '-extensions', 'v3', '-sha256', '-out', path,
    ]);
    return this.#load(name, path, keyPath);
  }

  /** Writes a certificate made elsewhere (e.g. a tampered one) so openssl can read it. */
  adopt(name: string, cert: X509Certificate): Issued {
    const path = join(this.dir, `${name}.pem`);
    const b64 = cert.raw.toString('base64').replace(/.{64}/g, '$&\n');
    const pem = `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`.replace('\n\n', '\n');
    writeFileSync(path, pem);
    return { name, pem, path, keyPath: '', cert };
  }

  #writeCnf(name: string, ext: string): string {
    const cnf = join(this.dir, `${name}.cnf`);
    writeFileSync(cnf, `[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n[v3]\n${ext}\n`);
    return cnf;
  }

  #load(name: string, path: string, keyPath: string): Issued {
    const pem = readFileSync(path, 'utf8');
    return { name, pem, path, keyPath, cert: new X509Certificate(pem) };
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export const CA_EXT = [
  'basicConstraints = critical, CA:TRUE',
  'keyUsage = critical, keyCertSign, cRLSign',
  'subjectKeyIdentifier = hash',
].join('\n');

export const caExt = (id: string, more = ''): string => `${CA_EXT}\nsubjectAltName = URI:${id}\n${more}`;

export const GOOD_LEAF_LINES = {
  bc: 'basicConstraints = critical, CA:FALSE',
  ku: 'keyUsage = critical, digitalSignature',
  eku: 'extendedKeyUsage = serverAuth, clientAuth',
  san: 'subjectAltName = URI:spiffe://example.org/workload',
  aki: 'authorityKeyIdentifier = keyid',
};

/** Good leaf extensions with some lines replaced (a value of '' removes the line). */
export function leafExt(overrides: Partial<Record<keyof typeof GOOD_LEAF_LINES, string>> & { extra?: string } = {}): string {
  const lines = { ...GOOD_LEAF_LINES, ...overrides };
  const { extra, ...rest } = lines as typeof lines & { extra?: string };
  return [...Object.values(rest).filter((l) => l !== ''), extra ?? ''].join('\n');
}
