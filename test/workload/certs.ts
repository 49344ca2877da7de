/**
 * Real certificates for the Workload API tests, made with the openssl CLI
 * (an implementation independent of keel's CA): a self-signed SPIFFE CA per
 * trust domain and X.509-SVID leaves under it.
 */
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCa {
  readonly trustDomain: string;
  readonly certDer: Buffer;
  readonly keyPem: string;
}

export interface TestLeaf {
  readonly chainDer: Buffer[];
  readonly privateKeyPkcs8: Buffer;
  readonly expiresAt: Date;
}

function withTmp<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'keel-wl-certs-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const openssl = (args: string[], input?: string): Buffer => execFileSync('openssl', args, { input, stdio: ['pipe', 'pipe', 'pipe'] });

export function makeCa(trustDomain: string): TestCa {
  return withTmp((dir) => {
    const key = join(dir, 'ca.key');
    const cert = join(dir, 'ca.pem');
    openssl([
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
      '-days', '2', '-subj', `/O=keel-test/CN=${trustDomain}`,
      '-addext', `subjectAltName=URI:spiffe://${trustDomain}`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    return { trustDomain, certDer: new X509Certificate(readFileSync(cert)).raw, keyPem: readFileSync(key, 'utf8') };
  });
}

/** A leaf X.509-SVID for `spiffeId`, signed by `ca` with openssl; a fresh P-256 key each time. */
export function issueLeaf(ca: TestCa, spiffeId: string): TestLeaf {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return withTmp((dir) => {
    const keyFile = join(dir, 'leaf.key');
    const caKey = join(dir, 'ca.key');
    const caCert = join(dir, 'ca.pem');
    const ext = join(dir, 'ext.cnf');
    writeFileSync(keyFile, privateKey.export({ format: 'pem', type: 'pkcs8' }));
    writeFileSync(caKey, ca.keyPem);
    writeFileSync(caCert, new X509Certificate(ca.certDer).toString());
    writeFileSync(
      ext,
      [
        `subjectAltName=URI:${spiffeId}`,
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement',
        'extendedKeyUsage=serverAuth,clientAuth',
      ].join('\n'),
    );
    const csr = openssl(['req', '-new', '-key', keyFile, '-subj', '/O=keel-test']);
    const pem = openssl(['x509', '-req', '-CA', caCert, '-CAkey', caKey, '-CAcreateserial', '-days', '1', '-extfile', ext, '-outform', 'PEM'], csr.toString());
    const cert = new X509Certificate(pem);
    return {
      chainDer: [cert.raw],
      privateKeyPkcs8: privateKey.export({ format: 'der', type: 'pkcs8' }),
      expiresAt: new Date(cert.validTo),
    };
  });
}

export const ecPrivateKey = (): KeyObject => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
