/**
 * Cross-checks against a real swtpm driven by tpm2-tools, an independent
 * implementation of every structure and operation keel does in software.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import {
  TPM_ALG, TPM_ECC_CURVE, AkPublicError, EkCertificateError, QuoteVerificationError,
  checkAkPublic, credentialToTpm2ToolsFile, ekCertificateMatches, ekPublicHash, makeCredential, marshalTpm2bPublic,
  objectName, parseTpm2bPublic, parseTpmsAttest, parseTpmtSignature, pcrSelection, publicKeyFromTpmtPublic,
  unwrapEkCertificate, verifyEkCertificate, verifyQuote, type TpmtPublic, type TpmlPcrSelection, type VerifyQuoteInput,
} from '../../src/tpm/index.js';

const exec = promisify(execFile);

interface Tpm {
  sim: Swtpm;
  dir: string;
  /** Runs a tpm2-tools command, then flushes what it left loaded (swtpm has 3 slots and no resource manager). */
  tool(cmd: string, args: string[]): Promise<string>;
  file(name: string): string;
}

async function openTpm(): Promise<Tpm> {
  const sim = await startSwtpm();
  const dir = await mkdtemp(join(tmpdir(), 'keel-tpm-test-'));
  const tool = async (cmd: string, args: string[]): Promise<string> => {
    try {
      const { stdout } = await exec(cmd, args, { env: sim.env, cwd: dir });
      return stdout;
    } finally {
      await exec('tpm2_flushcontext', ['-t'], { env: sim.env });
      await exec('tpm2_flushcontext', ['-s'], { env: sim.env });
    }
  };
  return { sim, dir, tool, file: (n) => join(dir, n) };
}

async function closeTpm(t: Tpm | undefined): Promise<void> {
  if (!t) return;
  await t.sim.stop();
  await rm(t.dir, { recursive: true, force: true });
}

const printedName = (out: string): string => /^name: ([0-9a-f]+)$/m.exec(out)![1]!;

const RSA_EK = '0x81010001';
const P384_EK = '0x81010016';
const AKS = { ecdsa: '0x81000100', rsassa: '0x81000101', rsapss: '0x81000102' } as const;

async function readPublic(t: Tpm, handle: string): Promise<{ pub: TpmtPublic; bytes: Buffer; name: string }> {
  const f = t.file(`pub-${handle}`);
  const out = await t.tool('tpm2_readpublic', ['-c', handle, '-o', f]);
  const bytes = await readFile(f);
  return { pub: parseTpm2bPublic(bytes), bytes, name: printedName(out) };
}

async function createAk(t: Tpm, kind: keyof typeof AKS): Promise<{ pub: TpmtPublic; name: Buffer }> {
  const [alg, scheme] = kind === 'ecdsa' ? ['ecc', 'ecdsa'] : ['rsa', kind];
  await t.tool('tpm2_createak', [
    '-C', RSA_EK, '-c', `ak-${kind}.ctx`, '-G', alg, '-g', 'sha256', '-s', scheme, '-u', `ak-${kind}.pub`, '-n', `ak-${kind}.name`,
  ]);
  await t.tool('tpm2_evictcontrol', ['-C', 'o', '-c', `ak-${kind}.ctx`, AKS[kind]]);
  return { pub: parseTpm2bPublic(await readFile(t.file(`ak-${kind}.pub`))), name: await readFile(t.file(`ak-${kind}.name`)) };
}

interface ToolQuote {
  attest: Buffer;
  signature: Buffer;
  pcrValues: Buffer[];
}

/** tpm2_quote with `-F values`: the PCR values come back concatenated in selection order. */
async function toolQuote(t: Tpm, ak: string, pcrs: string, nonce: Buffer, sizes: number[], scheme = 'null'): Promise<ToolQuote> {
  const args = ['-c', ak, '-l', pcrs, '-q', nonce.toString('hex'), '-m', 'q.msg', '-s', 'q.sig', '-o', 'q.pcrs', '-F', 'values', '-g', 'sha256'];
  if (scheme !== 'null') args.push('--scheme', scheme);
  await t.tool('tpm2_quote', args);
  const all = await readFile(t.file('q.pcrs'));
  let at = 0;
  const pcrValues = sizes.map((n) => all.subarray(at, (at += n)));
  expect(at).toBe(all.length);
  return { attest: await readFile(t.file('q.msg')), signature: await readFile(t.file('q.sig')), pcrValues };
}

let a: Tpm | undefined;
let b: Tpm | undefined;
const aks: Partial<Record<keyof typeof AKS, { pub: TpmtPublic; name: Buffer }>> = {};
let otherAk: TpmtPublic;

beforeAll(async () => {
  [a, b] = await Promise.all([openTpm(), openTpm()]);
  for (const k of Object.keys(AKS) as (keyof typeof AKS)[]) aks[k] = await createAk(a, k);
  otherAk = (await createAk(b, 'ecdsa')).pub;
  // PCRs of a fresh swtpm are all zero: give two of them content
  await a.tool('tpm2_pcrextend', [`3:sha256=${'ab'.repeat(32)},sha1=${'cd'.repeat(20)}`]);
  await a.tool('tpm2_pcrextend', [`7:sha256=${'12'.repeat(32)},sha1=${'34'.repeat(20)}`]);
});

afterAll(async () => {
  await Promise.all([closeTpm(a), closeTpm(b)]);
});

describe('public areas from swtpm', () => {
  it('parses the RSA and P-384 EKs byte-exactly, with the names tpm2_readpublic prints', async () => {
    const rsa = await readPublic(a!, RSA_EK);
    expect(marshalTpm2bPublic(rsa.pub).equals(rsa.bytes)).toBe(true);
    expect(objectName(rsa.pub).toString('hex')).toBe(rsa.name);
    expect(rsa.pub.type).toBe(TPM_ALG.RSA);
    expect(rsa.pub.objectAttributes).toBe(0x000300b2);
    expect(rsa.pub.authPolicy.toString('hex')).toBe('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa');
    expect(rsa.pub.parameters.symmetric).toEqual({ algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB });
    if (rsa.pub.type !== TPM_ALG.RSA) throw new Error('unreachable');
    expect(rsa.pub.parameters.exponent).toBe(0);
    expect(publicKeyFromTpmtPublic(rsa.pub).asymmetricKeyDetails).toMatchObject({ modulusLength: 2048, publicExponent: 65537n });

    const ecc = await readPublic(a!, P384_EK);
    expect(marshalTpm2bPublic(ecc.pub).equals(ecc.bytes)).toBe(true);
    expect(objectName(ecc.pub).toString('hex')).toBe(ecc.name);
    expect(ecc.pub.nameAlg).toBe(TPM_ALG.SHA384);
    expect(ecc.pub.parameters.symmetric).toEqual({ algorithm: TPM_ALG.AES, keyBits: 256, mode: TPM_ALG.CFB });
    if (ecc.pub.type !== TPM_ALG.ECC) throw new Error('unreachable');
    expect(ecc.pub.parameters.curveId).toBe(TPM_ECC_CURVE.NIST_P384);
    expect(publicKeyFromTpmtPublic(ecc.pub).asymmetricKeyDetails).toMatchObject({ namedCurve: 'secp384r1' });
  });

  it('accepts the AKs tpm2_createak makes (names as it prints them) and refuses an EK as an AK', async () => {
    for (const [kind, ak] of Object.entries(aks)) {
      expect(checkAkPublic(ak!.pub), kind).toBe(ak!.pub);
      expect(objectName(ak!.pub).equals(ak!.name), kind).toBe(true);
      const { name } = await readPublic(a!, AKS[kind as keyof typeof AKS]);
      expect(objectName(ak!.pub).toString('hex')).toBe(name);
    }
    const ek = await readPublic(a!, RSA_EK);
    try {
      checkAkPublic(ek.pub);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(AkPublicError);
      expect((e as AkPublicError).attribute).toBe('sign');
    }
  });
});

describe('quotes made by tpm2_quote verify with verifyQuote', () => {
  const selection: TpmlPcrSelection = pcrSelection(
    { hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6, 7] },
    { hashAlg: TPM_ALG.SHA1, pcrs: [0, 3, 7] },
  );
  const pcrArg = 'sha256:0,1,2,3,4,5,6,7+sha1:0,3,7';
  const sizes = [...Array(8).fill(32), 20, 20, 20] as number[];

  it.each(['ecdsa', 'rsassa', 'rsapss'] as const)('%s AK: accepts, and refuses a changed nonce, PCR value, AK or selection', async (kind) => {
    const nonce = randomBytes(32);
    const q = await toolQuote(a!, AKS[kind], pcrArg, nonce, sizes, kind === 'rsapss' ? 'rsapss' : 'null');
    const input: VerifyQuoteInput = { akPublic: aks[kind]!.pub, attest: q.attest, signature: q.signature, nonce, expectedSelection: selection, pcrValues: q.pcrValues };
    const v = verifyQuote(input);
    expect(v.attest.extraData).toEqual(nonce);
    expect(parseTpmtSignature(q.signature).sigAlg).toBe(kind === 'ecdsa' ? TPM_ALG.ECDSA : kind === 'rsassa' ? TPM_ALG.RSASSA : TPM_ALG.RSAPSS);
    // PCR 3 and 7 hold what was extended
    expect(q.pcrValues[3]!.equals(createHash('sha256').update(Buffer.alloc(32)).update(Buffer.alloc(32, 0xab)).digest())).toBe(true);

    const reason = (over: Partial<VerifyQuoteInput>): string => {
      try {
        verifyQuote({ ...input, ...over });
        return 'accepted';
      } catch (e) {
        expect(e).toBeInstanceOf(QuoteVerificationError);
        return (e as QuoteVerificationError).reason;
      }
    };
    expect(reason({ nonce: randomBytes(32) })).toBe('nonce');
    const changed = q.pcrValues.map((x) => Buffer.from(x));
    changed[9]![0]! ^= 0x80;
    expect(reason({ pcrValues: changed })).toBe('pcr-digest');
    expect(reason({ akPublic: otherAk })).toBe(kind === 'ecdsa' ? 'signature' : 'scheme');
    expect(reason({ akPublic: aks[kind === 'ecdsa' ? 'rsassa' : 'ecdsa']!.pub })).toBe('scheme');
    expect(reason({ expectedSelection: pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [0, 1, 2, 3, 4, 5, 6] }, { hashAlg: TPM_ALG.SHA1, pcrs: [0, 3, 7] }) })).toBe('selection');
  });

  it('orders quotes by the TPM clock, across a TPM reset too', async () => {
    const one = async () => {
      const nonce = randomBytes(16);
      const q = await toolQuote(a!, AKS.ecdsa, 'sha256:0,7', nonce, [32, 32]);
      return { akPublic: aks.ecdsa!.pub, attest: q.attest, signature: q.signature, nonce, expectedSelection: pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: [0, 7] }), pcrValues: q.pcrValues };
    };
    const first = await one();
    await new Promise((r) => setTimeout(r, 20));
    const second = await one();
    const c1 = verifyQuote(first).clockInfo;
    const c2 = verifyQuote({ ...second, previous: c1 }).clockInfo;
    expect(c2.clock).toBeGreaterThan(c1.clock);
    expect(() => verifyQuote({ ...first, previous: c2 })).toThrow(expect.objectContaining({ reason: 'clock-rollback' }));

    await a!.sim.restart();
    const afterReset = await one();
    const c3 = verifyQuote({ ...afterReset, previous: c2 }).clockInfo;
    expect(c3.resetCount).toBeGreaterThan(c2.resetCount);
    expect(() => verifyQuote({ ...second, previous: c3 })).toThrow(expect.objectContaining({ reason: 'clock-rollback' }));
    // the attest tpm2_print would show: parse agrees on the clock
    expect(parseTpmsAttest(afterReset.attest).clockInfo).toEqual(c3);
  });
});

describe('credentials made by makeCredential activate with tpm2_activatecredential', () => {
  async function activate(t: Tpm, ek: string, ak: string, file: Buffer): Promise<Buffer> {
    await writeFile(t.file('cred.bin'), file);
    await rm(t.file('act.out'), { force: true });
    if (ek === RSA_EK) {
      // the default EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT): satisfy it in a policy session
      await exec('tpm2_startauthsession', ['--policy-session', '-S', 's.ctx'], { env: t.sim.env, cwd: t.dir });
      try {
        await exec('tpm2_policysecret', ['-S', 's.ctx', '-c', 'e'], { env: t.sim.env, cwd: t.dir });
        await exec('tpm2_activatecredential', ['-c', ak, '-C', ek, '-i', 'cred.bin', '-o', 'act.out', '-P', 'session:s.ctx'], { env: t.sim.env, cwd: t.dir });
      } finally {
        await exec('tpm2_flushcontext', ['s.ctx'], { env: t.sim.env, cwd: t.dir }).catch(() => undefined);
        await exec('tpm2_flushcontext', ['-t'], { env: t.sim.env });
      }
    } else {
      // swtpm's high-range P-384 EK has userWithAuth (its authPolicy is a PolicyOR): an empty password works
      await t.tool('tpm2_activatecredential', ['-c', ak, '-C', ek, '-i', 'cred.bin', '-o', 'act.out']);
    }
    return readFile(t.file('act.out'));
  }

  it.each([['RSA-2048 EK', RSA_EK], ['ECC P-384 EK (SHA-384, AES-256)', P384_EK]] as const)('%s', async (_n, ek) => {
    const { pub } = await readPublic(a!, ek);
    const secret = randomBytes(32);
    const cred = makeCredential(pub, aks.ecdsa!.name, secret);
    expect(await activate(a!, ek, AKS.ecdsa, credentialToTpm2ToolsFile(cred))).toEqual(secret);

    // bound to the AK: activating it for another object of the same TPM fails
    await expect(activate(a!, ek, AKS.rsassa, credentialToTpm2ToolsFile(cred))).rejects.toThrow(/tpm2_activatecredential/);
    // bound to the TPM: another swtpm cannot recover it with its own EK and AK
    const otherName = objectName(otherAk);
    const forOther = makeCredential(pub, otherName, secret);
    await expect(activate(b!, ek, AKS.ecdsa, credentialToTpm2ToolsFile(forOther))).rejects.toThrow(/tpm2_activatecredential/);
  });
});

describe('EK certificates from swtpm NV', () => {
  async function nvCert(t: Tpm, index: string): Promise<Buffer> {
    await t.tool('tpm2_nvread', [index, '-o', 'cert.nv']);
    return unwrapEkCertificate(await readFile(t.file('cert.nv')));
  }

  it.each([['RSA', '0x01c00002', RSA_EK], ['P-384', '0x01c00016', P384_EK]] as const)('%s: chains to its own CA only, and matches its own EK only', async (_n, index, ekHandle) => {
    const der = await nvCert(a!, index);
    const [root, issuer] = a!.sim.manufacturerCaPems as [string, string];
    const v = verifyEkCertificate(der, { roots: [root], intermediates: [issuer] });
    expect(v.chain.map((c) => c.subject)).toEqual([new X509Certificate(der).subject, new X509Certificate(issuer).subject, new X509Certificate(root).subject]);
    // the intermediate alone may be the anchor
    expect(verifyEkCertificate(der, { roots: [issuer] }).chain).toHaveLength(2);

    const [rootB, issuerB] = b!.sim.manufacturerCaPems as [string, string];
    const err = (() => {
      try {
        verifyEkCertificate(der, { roots: [rootB], intermediates: [issuerB] });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(EkCertificateError);
    // both local CAs are named "swtpm-localca"; the other one's key identifier does not match
    expect((err as EkCertificateError).reason).toBe('untrusted');
    expect(() => verifyEkCertificate(der, { roots: [issuer], now: new Date('2000-01-01T00:00:00Z') })).toThrow(/not-yet-valid/);

    const own = await readPublic(a!, ekHandle);
    const other = await readPublic(b!, ekHandle);
    expect(ekCertificateMatches(der, own.pub)).toBe(true);
    expect(ekCertificateMatches(der, other.pub)).toBe(false);

    // ekPublicHash against openssl's SubjectPublicKeyInfo of the certificate
    await writeFile(a!.file('cert.der'), der);
    const { stdout: pem } = await exec('openssl', ['x509', '-inform', 'der', '-in', a!.file('cert.der'), '-pubkey', '-noout']);
    await writeFile(a!.file('spki.pem'), pem);
    await exec('openssl', ['pkey', '-pubin', '-in', a!.file('spki.pem'), '-outform', 'der', '-out', a!.file('spki.der')]);
    const expected = createHash('sha256').update(await readFile(a!.file('spki.der'))).digest('hex');
    expect(ekPublicHash(own.pub)).toBe(expected);
    expect(ekPublicHash(other.pub)).not.toBe(expected);
  });
});
