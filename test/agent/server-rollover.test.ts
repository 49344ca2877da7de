/**
 * The agent's check of the server's TLS chain across a CA rotation it did not
 * see (verifyServerChain with endorsedAuthorities): a chain that ends in a CA
 * new to the agent is accepted only through a rollover certificate that a CA
 * the agent trusts signed, within both validities, for the same trust
 * domain, and the acceptance is reported. Pure logic: a CA over in-memory
 * keys with a fake clock (the live path is test/agent/missed-rotation.test.ts).
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ServerCertificateError, verifyServerChain } from '../../src/agent/attestation/index.js';
import { buildCsr } from '../../src/spiffe/csr.js';
import { CertificateAuthority, MemoryCaJournal } from '../../src/server/ca/index.js';
import { FakeClock, MemoryKeyStore } from '../ca/helpers.js';

const T0 = Date.UTC(2031, 0, 1);
const SERVER_ID = 'spiffe://example.org/keel/server';
const clock = new FakeClock(T0);
let ca: CertificateAuthority;
let k1: X509Certificate;
let k2: X509Certificate;
let rollover: Buffer;

const pem = (...certs: X509Certificate[]): string => certs.map((c) => c.toString()).join('');

async function serverLeaf(authority: CertificateAuthority, id = SERVER_ID): Promise<Buffer> {
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return (await authority.issueX509Svid({ csr: buildCsr(key), spiffeId: id, ttlSeconds: 60 })).certDer;
}

function refusal(f: () => unknown): ServerCertificateError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ServerCertificateError);
    return e as ServerCertificateError;
  }
  throw new Error('the chain was accepted');
}

beforeAll(async () => {
  // 600 s CA keys: key 2 is prepared at t=300 and active from t=500; key 1 ends at t=600.
  ca = await CertificateAuthority.open({
    trustDomain: 'example.org',
    keys: new MemoryKeyStore(),
    journal: new MemoryCaJournal(),
    now: clock.now,
    rotationCheckIntervalMs: 0,
    backdateSeconds: 0,
    x509: { caTtlSeconds: 600, svidMaxTtlSeconds: 100 },
    jwt: { keyTtlSeconds: 600, svidMaxTtlSeconds: 100 },
  });
  k1 = new X509Certificate(ca.activeCaCertificate()!);
  clock.ms = T0 + 300_000;
  await ca.rotate();
  clock.ms = T0 + 500_000;
  await ca.rotate();
  k2 = new X509Certificate(ca.activeCaCertificate()!);
  rollover = ca.rolloverCertificates()[0]!;
});
afterAll(async () => {
  await ca?.close();
});

describe("the server's chain after a rotation the agent missed", () => {
  it('leaf of the new CA + its rollover certificate, the agent trusting only the old CA: accepted, and the endorsement is reported', async () => {
    expect(k2.raw.equals(k1.raw)).toBe(false);
    const leaf = await serverLeaf(ca);
    const e = verifyServerChain([leaf, rollover!], pem(k1), SERVER_ID, { now: new Date(clock.ms) });
    expect(e).toEqual({
      authority: { subject: k2.subject, fingerprint256: new X509Certificate(rollover!).fingerprint256, notAfter: k1.validTo },
      endorsedBy: { subject: k1.subject, fingerprint256: k1.fingerprint256 },
    });
  });

  it('an agent that already has the new CA verifies the ordinary way: no endorsement reported', async () => {
    const leaf = await serverLeaf(ca);
    expect(verifyServerChain([leaf, rollover!], pem(k1, k2), SERVER_ID, { now: new Date(clock.ms) })).toBeUndefined();
    expect(verifyServerChain([leaf, rollover!], pem(k2), SERVER_ID, { now: new Date(clock.ms) })).toBeUndefined();
  });

  it('without the rollover certificate the agent is locked out (untrusted), as before', async () => {
    const leaf = await serverLeaf(ca);
    expect(refusal(() => verifyServerChain([leaf], pem(k1), SERVER_ID, { now: new Date(clock.ms) })).reason).toBe('untrusted');
  });

  it('after the old CA ended, its rollover certificate vouches for nothing', async () => {
    clock.ms = T0 + 590_000;
    const leaf = await serverLeaf(ca);
    clock.ms = T0 + 500_000;
    const after = new Date(Date.parse(k1.validTo) + 1000);
    // The only path runs through a certificate that has ended: refused, naming it.
    expect(refusal(() => verifyServerChain([leaf, rollover!], pem(k1), SERVER_ID, { now: after })).message).toMatch(/expired at/);
    // Unless the agent's own clock tolerance covers it.
    expect(verifyServerChain([leaf, rollover!], pem(k1), SERVER_ID, { now: after, clockToleranceMs: 5000 })).toBeDefined();
  });

  it('a rollover certificate from a CA the agent does not trust (another deployment of the trust domain) does not help', async () => {
    const other = await CertificateAuthority.open({
      trustDomain: 'example.org',
      keys: new MemoryKeyStore(),
      journal: new MemoryCaJournal(),
      now: clock.now,
      rotationCheckIntervalMs: 0,
      x509: { caTtlSeconds: 600, svidMaxTtlSeconds: 100 },
      jwt: { keyTtlSeconds: 600, svidMaxTtlSeconds: 100 },
    });
    try {
      const leaf = await serverLeaf(ca);
      const foreign = new X509Certificate(other.activeCaCertificate()!);
      expect(refusal(() => verifyServerChain([leaf, rollover!], pem(foreign), SERVER_ID, { now: new Date(clock.ms) })).reason).toBe('untrusted');
    } finally {
      await other.close();
    }
  });

  it('an endorsed CA still has to issue the right identity: another SPIFFE ID under it is refused as identity', async () => {
    const leaf = await serverLeaf(ca, 'spiffe://example.org/not-the-server');
    expect(refusal(() => verifyServerChain([leaf, rollover!], pem(k1), SERVER_ID, { now: new Date(clock.ms) })).reason).toBe('identity');
  });

  it('a leaf of the old CA passed off as a rollover certificate (not a CA) is no endorsement', async () => {
    clock.ms = T0 + 100_000;
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    // A leaf signed by key 2 as what follows, with a leaf signed by key 1 offered as its "CA": refused.
    const fake = await ca.issueX509Svid({ csr: buildCsr(key), spiffeId: 'spiffe://example.org/x', ttlSeconds: 60 });
    clock.ms = T0 + 500_000;
    const leaf = await serverLeaf(ca);
    expect(refusal(() => verifyServerChain([leaf, fake.certDer], pem(k1), SERVER_ID, { now: new Date(clock.ms) })).reason).toBe('untrusted');
  });
});
