/**
 * Certificates for the manager's unit tests, made by the openssl CLI (not by
 * keel's CA): a self-signed SPIFFE CA, and X.509-SVIDs signed from the
 * agent's CSRs the way a server would.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCa {
  readonly certDer: Buffer;
  readonly keyPem: string;
}

function withTmp<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'keel-agent-pki-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const openssl = (args: string[]): Buffer => execFileSync('openssl', args, { stdio: ['pipe', 'pipe', 'pipe'] });

export function makeCa(trustDomain: string): TestCa {
  return withTmp((dir) => {
    openssl([
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.pem'), '-days', '3', '-subj', `/O=keel-test/CN=${trustDomain}`,
      '-addext', `subjectAltName=URI:spiffe://${trustDomain}`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    return { certDer: new X509Certificate(readFileSync(join(dir, 'ca.pem'))).raw, keyPem: readFileSync(join(dir, 'ca.key'), 'utf8') };
  });
}

/** Signs a DER CSR into a one-day X.509-SVID for `spiffeId`; returns the leaf DER. */
export function signCsr(ca: TestCa, csrDer: Buffer, spiffeId: string): Buffer {
  return withTmp((dir) => {
    writeFileSync(join(dir, 'csr.der'), csrDer);
    writeFileSync(join(dir, 'ca.key'), ca.keyPem);
    writeFileSync(join(dir, 'ca.pem'), new X509Certificate(ca.certDer).toString());
    writeFileSync(
      join(dir, 'ext.cnf'),
      [`subjectAltName=critical,URI:${spiffeId}`, 'basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement', 'extendedKeyUsage=serverAuth,clientAuth'].join('\n'),
    );
    const pem = openssl([
      'x509', '-req', '-in', join(dir, 'csr.der'), '-inform', 'DER', '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca.key'),
      '-set_serial', String(Date.now() * 1000 + Math.floor(Math.random() * 1000)), '-days', '1', '-extfile', join(dir, 'ext.cnf'),
    ]);
    return new X509Certificate(pem).raw;
  });
}

const asn1Time = (d: Date): string => d.toISOString().replace(/[-:T]/g, '').replace(/\.\d{3}Z$/, 'Z'); // YYYYMMDDHHMMSSZ

/**
 * Signs a DER CSR into an X.509-SVID for `spiffeId` valid exactly from
 * `notBefore` to `notAfter` (second precision; `openssl ca`, which takes
 * explicit dates, where `openssl x509 -req` takes whole days only).
 */
export function signCsrValidity(ca: TestCa, csrDer: Buffer, spiffeId: string, notBefore: Date, notAfter: Date): Buffer {
  return withTmp((dir) => {
    writeFileSync(join(dir, 'csr.der'), csrDer);
    writeFileSync(join(dir, 'ca.key'), ca.keyPem);
    writeFileSync(join(dir, 'ca.pem'), new X509Certificate(ca.certDer).toString());
    writeFileSync(join(dir, 'index.txt'), '');
    writeFileSync(
      join(dir, 'ca.cnf'),
      [
        '[ca]',
        'default_ca = test',
        '[test]',
        `dir = ${dir}`,
        'database = $dir/index.txt',
        'serial = $dir/serial',
        'new_certs_dir = $dir',
        'certificate = $dir/ca.pem',
        'private_key = $dir/ca.key',
        'default_md = sha256',
        'policy = anything',
        'unique_subject = no',
        'email_in_dn = no',
        'copy_extensions = none',
        'x509_extensions = svid',
        '[anything]',
        'O = optional',
        '[svid]',
        `subjectAltName = critical,URI:${spiffeId}`,
        'basicConstraints = critical,CA:FALSE',
        'keyUsage = critical,digitalSignature,keyEncipherment,keyAgreement',
        'extendedKeyUsage = serverAuth,clientAuth',
        '',
      ].join('\n'),
    );
    openssl(['req', '-inform', 'DER', '-in', join(dir, 'csr.der'), '-out', join(dir, 'csr.pem')]);
    openssl([
      'ca', '-batch', '-config', join(dir, 'ca.cnf'), '-notext', '-subj', '/O=keel-test', '-in', join(dir, 'csr.pem'), '-out', join(dir, 'leaf.pem'),
      '-startdate', asn1Time(notBefore), '-enddate', asn1Time(notAfter), '-rand_serial',
    ]);
    return new X509Certificate(readFileSync(join(dir, 'leaf.pem'))).raw;
  });
}
