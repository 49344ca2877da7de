/**
 * keel's CA as an intermediate under an upstream CA whose key is a PEM file
 * on disk (test only): leaf ← keel CA ← upstream, verified by openssl with the
 * upstream root alone as trust anchor.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm } from '../../src/hsm/index.js';
import { CertificateAuthority, CaConfigError, MemoryCaJournal, FileCaJournal, derToPem, pemToDers, signerFromPrivateKey } from '../../src/server/ca/index.js';
import { verifyX509Svid, BundleSet } from '../../src/spiffe/index.js';
import { caTestToken, ecKey, makeCsr, run, type CaTestToken } from './helpers.js';

describe('intermediate CA under an upstream', () => {
  let t: CaTestToken;
  let hsm: Hsm;
  let dir: string;
  const p = (f: string): string => join(dir, f);

  beforeAll(async () => {
    t = await caTestToken();
    hsm = await Hsm.open(t.config);
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-upstream-'));
    // Upstream root (P-384) and an upstream intermediate (P-256) that signs keel's CA.
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', p('root.key'), '-subj', '/O=Upstream/CN=Root', '-days', '30',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', p('root.pem')]);
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('mid.key'), '-subj', '/O=Upstream/CN=Issuing', '-out', p('mid.csr')]);
    await writeFile(p('mid.ext'), 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n');
    await run('openssl', ['x509', '-req', '-in', p('mid.csr'), '-CA', p('root.pem'), '-CAkey', p('root.key'), '-CAcreateserial', '-days', '20', '-extfile', p('mid.ext'), '-out', p('mid.pem')]);
  });
  afterAll(async () => {
    await hsm?.close();
    await t?.tok.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  const options = async (signerKey: string, chain: string[], journalDir: string) => ({
    trustDomain: 'example.org',
    keys: hsm,
    journal: new FileCaJournal(journalDir),
    rotationCheckIntervalMs: 0,
    keyLabelPrefix: `up-${journalDir.slice(-1)}`,
    x509: {
      caTtlSeconds: 86_400,
      svidMaxTtlSeconds: 3_600,
      upstream: {
        chainDer: (await Promise.all(chain.map((c) => readFile(p(c), 'utf8')))).flatMap(pemToDers),
        signer: signerFromPrivateKey(await readFile(p(signerKey), 'utf8')),
      },
    },
    jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
  });

  it('directly under the upstream root: chain leaf ← keel CA ← root', async () => {
    const ca = await CertificateAuthority.open(await options('root.key', ['root.pem'], p('j1')));
    try {
      const svid = await ca.issueX509Svid({ csr: makeCsr(ecKey()), spiffeId: 'spiffe://example.org/svc', ttlSeconds: 600 });
      expect(svid.chainDer).toHaveLength(1);
      expect(svid.chainDer[0]!.equals(ca.activeCaCertificate()!)).toBe(true);
      // The bundle holds the upstream root, not keel's CA.
      const bundle = ca.bundle();
      expect(bundle.x509Authorities.map((c) => c.fingerprint256)).toEqual([new X509Certificate(await readFile(p('root.pem'))).fingerprint256]);
      await writeFile(p('leaf1.pem'), derToPem(svid.certDer));
      await writeFile(p('chain1.pem'), svid.chainDer.map((d) => derToPem(d)).join(''));
      const ok = await run('openssl', ['verify', '-CAfile', p('root.pem'), '-untrusted', p('chain1.pem'), p('leaf1.pem')]);
      expect(ok.stdout).toContain('leaf1.pem: OK');
      // Without keel's CA in the chain there is no path.
      await expect(run('openssl', ['verify', '-CAfile', p('root.pem'), p('leaf1.pem')])).rejects.toThrow();
      const text = await run('openssl', ['x509', '-in', p('chain1.pem'), '-noout', '-text']);
      expect(text.stdout).toMatch(/Issuer: O\s?=\s?Upstream, CN\s?=\s?Root/);
      expect(text.stdout).toMatch(/CA:TRUE, pathlen:0/);
      const v = verifyX509Svid([svid.certDer, ...svid.chainDer].map((d) => new X509Certificate(d)), BundleSet.of([bundle]));
      expect(v.id.toString()).toBe('spiffe://example.org/svc');
    } finally {
      await ca.close();
    }
  });

  it('under an upstream intermediate: chain leaf ← keel CA ← upstream intermediate ← root', async () => {
    const ca = await CertificateAuthority.open(await options('mid.key', ['mid.pem', 'root.pem'], p('j2')));
    try {
      const svid = await ca.issueX509Svid({ csr: makeCsr(ecKey()), spiffeId: 'spiffe://example.org/svc', ttlSeconds: 600 });
      expect(svid.chainDer).toHaveLength(2);
      await writeFile(p('leaf2.pem'), derToPem(svid.certDer));
      await writeFile(p('chain2.pem'), svid.chainDer.map((d) => derToPem(d)).join(''));
      const ok = await run('openssl', ['verify', '-CAfile', p('root.pem'), '-untrusted', p('chain2.pem'), p('leaf2.pem')]);
      expect(ok.stdout).toContain('leaf2.pem: OK');
      // The CA certificate never outlives the upstream one.
      const keelCa = new X509Certificate(svid.chainDer[0]!);
      expect(Date.parse(keelCa.validTo)).toBeLessThanOrEqual(Date.parse(new X509Certificate(await readFile(p('mid.pem'))).validTo));
    } finally {
      await ca.close();
    }
  });

  it('refuses an upstream signer that does not hold the upstream certificate key', async () => {
    const o = await options('root.key', ['mid.pem', 'root.pem'], p('j3'));
    await expect(CertificateAuthority.open({ ...o, journal: new MemoryCaJournal() })).rejects.toThrow(CaConfigError);
    const o2 = await options('root.key', ['root.pem'], p('j4'));
    await expect(
      CertificateAuthority.open({ ...o2, journal: new MemoryCaJournal(), x509: { ...o2.x509, upstream: { ...o2.x509.upstream, signer: signerFromPrivateKey(ecKey()) } } }),
    ).rejects.toThrow(/x509.upstream.signer/);
  });
});
