/**
 * The CA over a real SoftHSM token: issued SVIDs checked by openssl, Node,
 * the SPIFFE verifier of src/spiffe and jose.
 */
import { JwtSvidError } from '../../src/spiffe/index.js';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jwtVerify, decodeProtectedHeader } from 'jose';
import { Hsm } from '../../src/hsm/index.js';
import { CertificateAuthority, CaConfigError, CaIssueError, CsrError, FileCaJournal, MemoryCaJournal, derToPem, parseCsr } from '../../src/server/ca/index.js';
import { verifyX509Svid, validateJwtSvid, BundleSet, X509SvidError } from '../../src/spiffe/index.js';
import { caTestToken, ecKey, makeCsr, rsaKey, run, FakeClock, type CaTestToken } from './helpers.js';

describe('CertificateAuthority on SoftHSM', () => {
  let t: CaTestToken;
  let hsm: Hsm;
  let dir: string;
  let ca: CertificateAuthority;
  let other: CertificateAuthority;
  const clock = new FakeClock(Date.now());

  const options = (td: string, prefix: string, journalDir: string) => ({
    trustDomain: td,
    keys: hsm,
    journal: new FileCaJournal(journalDir),
    now: clock.now,
    keyLabelPrefix: prefix,
    rotationCheckIntervalMs: 0,
    x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3_600 },
    jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 600 },
  });

  beforeAll(async () => {
    t = await caTestToken();
    hsm = await Hsm.open(t.config);
    dir = await mkdtemp(join(tmpdir(), 'keel-ca-auth-'));
    ca = await CertificateAuthority.open(options('example.org', 'keel', join(dir, 'a')));
    other = await CertificateAuthority.open(options('other.org', 'other', join(dir, 'b')));
    await writeFile(join(dir, 'bundle.pem'), ca.bundle().x509Authorities.map((c) => c.toString()).join(''));
    await writeFile(join(dir, 'other.pem'), other.bundle().x509Authorities.map((c) => c.toString()).join(''));
  });
  afterAll(async () => {
    await ca?.close();
    await other?.close();
    await hsm?.close();
    await t?.tok.destroy();
    await rm(dir, { recursive: true, force: true });
  });

  it('starts with one active X.509 CA key and one JWT key, both in the HSM and the bundle', async () => {
    const st = ca.status();
    expect(st.map((s) => [s.kind, s.state, s.label])).toEqual([
      ['x509', 'active', 'keel-x509-ca-1'],
      ['jwt', 'active', 'keel-jwt-1'],
    ]);
    expect(await hsm.findKey({ label: 'keel-x509-ca-1' })).toBeDefined();
    expect(await hsm.findKey({ label: 'keel-jwt-1' })).toBeDefined();
    const b = ca.bundle();
    expect(b.x509Authorities).toHaveLength(1);
    expect(b.jwtAuthorities.size).toBe(1);
    // Nothing private reached the journal: just labels, ids, certificates.
    const journal = await readFile(join(dir, 'a', 'ca-journal.json'), 'utf8');
    expect(journal).not.toMatch(/PRIVATE|"d":/);
  });

  it('the CA certificate is a self-signed SPIFFE CA (openssl x509 -text)', async () => {
    await writeFile(join(dir, 'ca.pem'), derToPem(ca.activeCaCertificate()!));
    const { stdout } = await run('openssl', ['x509', '-in', join(dir, 'ca.pem'), '-noout', '-text']);
    expect(stdout).toMatch(/X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(stdout).toMatch(/X509v3 Key Usage: critical\s+Digital Signature, Certificate Sign, CRL Sign/);
    expect(stdout).toMatch(/X509v3 Subject Alternative Name:\s+URI:spiffe:\/\/example.org\s/);
    expect(stdout).toMatch(/X509v3 Name Constraints: critical\s+Permitted:\s+URI:example.org/);
    expect(stdout).toMatch(/X509v3 Subject Key Identifier/);
    const self = await run('openssl', ['verify', '-CAfile', join(dir, 'ca.pem'), join(dir, 'ca.pem')]);
    expect(self.stdout).toContain('OK');
  });

  it('issues an X.509-SVID that openssl verifies with the bundle and refuses with another trust domain\'s', async () => {
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'w.key'), '-subj', '/CN=ignored', '-out', join(dir, 'w.csr')]);
    const svid = await ca.issueX509Svid({ csr: await readFile(join(dir, 'w.csr'), 'utf8'), spiffeId: 'spiffe://example.org/ns/prod/sa/web', dnsNames: ['web.example.org'], ttlSeconds: 1800 });
    await writeFile(join(dir, 'leaf.pem'), derToPem(svid.certDer));
    const ok = await run('openssl', ['verify', '-purpose', 'sslclient', '-CAfile', join(dir, 'bundle.pem'), join(dir, 'leaf.pem')]);
    expect(ok.stdout).toContain('leaf.pem: OK');
    await expect(run('openssl', ['verify', '-CAfile', join(dir, 'other.pem'), join(dir, 'leaf.pem')])).rejects.toThrow();

    const { stdout } = await run('openssl', ['x509', '-in', join(dir, 'leaf.pem'), '-noout', '-text', '-serial']);
    expect(stdout).toMatch(/X509v3 Subject Alternative Name:\s+URI:spiffe:\/\/example.org\/ns\/prod\/sa\/web, DNS:web.example.org/);
    expect(stdout).toMatch(/X509v3 Key Usage: critical\s+Digital Signature, Key Encipherment, Key Agreement/);
    expect(stdout).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(stdout).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(stdout).toContain(`serial=${svid.serial}`);
    // The key in the certificate is the CSR's; the key pair on disk matches it.
    const modA = await run('openssl', ['pkey', '-in', join(dir, 'w.key'), '-pubout']);
    const modB = await run('openssl', ['x509', '-in', join(dir, 'leaf.pem'), '-noout', '-pubkey']);
    expect(modB.stdout).toBe(modA.stdout);

    expect(svid.chainDer).toEqual([]);
    expect(svid.notAfter.getTime()).toBe(Math.floor((clock.ms + 1_800_000) / 1000) * 1000);
    expect(svid.notBefore.getTime()).toBe(Math.floor((clock.ms - 10_000) / 1000) * 1000);
    expect(svid.caKeyLabel).toBe('keel-x509-ca-1');
    expect(svid.caKeyId).toBe((await hsm.findKey({ label: 'keel-x509-ca-1' }))!.id.toString('hex'));
  });

  it('the SPIFFE verifier of src/spiffe accepts the SVID with the CA bundle and rejects it with another', async () => {
    const svid = await ca.issueX509Svid({ csr: makeCsr(ecKey('P-384'), 'ecdsa-sha384'), spiffeId: 'spiffe://example.org/db', ttlSeconds: 600 });
    const now = new Date(clock.ms);
    const v = verifyX509Svid([new X509Certificate(svid.certDer)], BundleSet.of([ca.bundle()]), { now });
    expect(v.id.toString()).toBe('spiffe://example.org/db');
    expect(() => verifyX509Svid([new X509Certificate(svid.certDer)], BundleSet.of([other.bundle()]), { now })).toThrow(X509SvidError);
  });

  it('issues for RSA CSRs too', async () => {
    const svid = await ca.issueX509Svid({ csr: makeCsr(rsaKey(2048), 'rsa-pss-sha256'), spiffeId: 'spiffe://example.org/rsa', ttlSeconds: 60 });
    expect(new X509Certificate(svid.certDer).verify(ca.bundle().x509Authorities[0]!.publicKey)).toBe(true);
  });

  it('clamps the TTL to the configured maximum', async () => {
    const svid = await ca.issueX509Svid({ csr: makeCsr(ecKey()), spiffeId: 'spiffe://example.org/long', ttlSeconds: 10 * 86_400 });
    expect(svid.notAfter.getTime()).toBe(Math.floor((clock.ms + 3_600_000) / 1000) * 1000);
  });

  it('refuses bad requests with typed errors', async () => {
    const csr = makeCsr(ecKey());
    await expect(ca.issueX509Svid({ csr, spiffeId: 'spiffe://other.org/x', ttlSeconds: 60 })).rejects.toThrow(CaIssueError);
    await expect(ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org', ttlSeconds: 60 })).rejects.toThrow(CaIssueError);
    await expect(ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/x', ttlSeconds: 0 })).rejects.toThrow(CaIssueError);
    await expect(ca.issueX509Svid({ csr, spiffeId: 'spiffe://example.org/x', ttlSeconds: 60, dnsNames: ['bad name'] })).rejects.toThrow(CaIssueError);
    await expect(ca.issueX509Svid({ csr: Buffer.from('nope'), spiffeId: 'spiffe://example.org/x', ttlSeconds: 60 })).rejects.toThrow(CsrError);
  });

  it('a batch is checked whole before anything is signed, then issued concurrently', async () => {
    const before = ca.status().find((s) => s.kind === 'x509')!.issuedUntil;
    const good = Array.from({ length: 8 }, (_, i) => ({ csr: parseCsr(makeCsr(ecKey())), spiffeId: `spiffe://example.org/batch/${i}`, ttlSeconds: 3600 * 2 }));
    await expect(ca.issueX509SvidBatch([...good, { csr: makeCsr(ecKey(), 'ecdsa-sha256', { corruptSignature: true }), spiffeId: 'spiffe://example.org/bad', ttlSeconds: 60 }])).rejects.toThrow(CsrError);
    expect(ca.status().find((s) => s.kind === 'x509')!.issuedUntil).toEqual(before);
    const out = await ca.issueX509SvidBatch(good);
    expect(out).toHaveLength(8);
    const root = ca.bundle().x509Authorities[0]!;
    out.forEach((o, i) => {
      const x = new X509Certificate(o.certDer);
      expect(x.verify(root.publicKey)).toBe(true);
      expect(x.subjectAltName).toBe(`URI:spiffe://example.org/batch/${i}`);
    });
    expect(new Set(out.map((o) => o.serial)).size).toBe(8);
  });

  it('mints JWT-SVIDs that src/spiffe and jose validate, with a kid that is in the bundle', async () => {
    const jwt = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/api', audience: 'https://api.example.org', ttlSeconds: 300 });
    const header = decodeProtectedHeader(jwt.token);
    expect(header).toEqual({ alg: 'ES256', kid: jwt.kid, typ: 'JWT' });
    const key = ca.bundle().jwtAuthorities.get(jwt.kid)!;
    expect(key).toBeDefined();
    const { payload } = await jwtVerify(jwt.token, key, { audience: 'https://api.example.org', currentDate: new Date(clock.ms) });
    expect(payload.sub).toBe('spiffe://example.org/api');
    expect(payload.exp).toBe(Math.floor((clock.ms + 300_000) / 1000));
    const v = await validateJwtSvid(jwt.token, BundleSet.of([ca.bundle()]), 'https://api.example.org', { now: new Date(clock.ms) });
    expect(v.id.toString()).toBe('spiffe://example.org/api');
    // Another trust domain's bundle holds no key for this token's trust domain.
    await expect(validateJwtSvid(jwt.token, BundleSet.of([other.bundle()]), 'https://api.example.org', { now: new Date(clock.ms) })).rejects.toBeInstanceOf(JwtSvidError);
    // Clamped to the JWT maximum.
    const long = await ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/api', audience: ['a', 'b'], ttlSeconds: 86_400 });
    expect(long.expiresAt.getTime() - long.issuedAt.getTime()).toBe(600_000);
  });

  it('refuses to start when the CA TTL is under six times the longest SVID TTL', async () => {
    const base = { trustDomain: 'example.org', keys: hsm, journal: new MemoryCaJournal(), rotationCheckIntervalMs: 0 };
    await expect(CertificateAuthority.open({ ...base, x509: { caTtlSeconds: 5 * 3600, svidMaxTtlSeconds: 3600 }, jwt: { keyTtlSeconds: 86_400, svidMaxTtlSeconds: 300 } })).rejects.toThrow(CaConfigError);
    await expect(CertificateAuthority.open({ ...base, x509: { caTtlSeconds: 86_400, svidMaxTtlSeconds: 3600 }, jwt: { keyTtlSeconds: 1000, svidMaxTtlSeconds: 300 } })).rejects.toThrow(/jwt.keyTtlSeconds/);
    // Refused before any key was made: only the two keys of the running CA exist.
    expect(await hsm.listKeys({ labelPrefix: 'keel-' })).toHaveLength(2);
  });

  it('refuses a journal of another trust domain', async () => {
    await expect(CertificateAuthority.open({ ...options('another.org', 'keel', join(dir, 'a')) })).rejects.toThrow(CaConfigError);
  });
});
