import { execFile } from 'node:child_process';
import { constants, createHash, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Hsm, HsmAlgorithmError, HsmKeyExistsError, p1363ToDer, type HsmAlgorithm, type HsmKey, type HsmKeyType } from '../../src/hsm/index.js';
import type { Signer } from '../../src/spiffe/signer.js';
import { probe, testToken, type TestToken } from './helpers.js';

const run = promisify(execFile);
const DATA = Buffer.from('keel: the CA signs this to-be-signed certificate');

function nodeVerify(key: HsmKey, alg: HsmAlgorithm, data: Buffer, sig: Buffer): boolean {
  const hash = alg.endsWith('256') ? 'sha256' : 'sha384';
  if (alg.startsWith('ES')) return verify(hash, data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, sig);
  if (alg.startsWith('PS')) {
    return verify(hash, data, { key: key.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: hash === 'sha256' ? 32 : 48 }, sig);
  }
  return verify(hash, data, { key: key.publicKey, padding: constants.RSA_PKCS1_PADDING }, sig);
}

describe('HSM keys on a real SoftHSM token', () => {
  let t: TestToken;
  let hsm: Hsm;
  let work: string;
  const keys = new Map<HsmKeyType, HsmKey>();

  beforeAll(async () => {
    t = await testToken();
    work = await mkdtemp(join(tmpdir(), 'keel-hsm-keys-'));
    hsm = await Hsm.open(t.config());
    for (const type of ['ec-p256', 'ec-p384', 'rsa-2048', 'rsa-3072'] as const) {
      keys.set(type, await hsm.generateKey({ label: `test-${type}`, type }));
    }
  });
  afterAll(async () => {
    await hsm?.close();
    await t?.tok.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('generates keys inside the token: private half sensitive, never extractable, sign-only', async () => {
    const p = probe(t.tok.module);
    const s = p.api.C_OpenSession(p.slotOf('keel'), pkcs11js.CKF_SERIAL_SESSION);
    try {
      p.api.C_Login(s, pkcs11js.CKU_USER, t.tok.pin);
    } catch (e) {
      expect((e as Error).message).toBe('CKR_USER_ALREADY_LOGGED_IN');
    }
    try {
      for (const [type, key] of keys) {
        p.api.C_FindObjectsInit(s, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
          { type: pkcs11js.CKA_ID, value: key.id },
        ]);
        const found = p.api.C_FindObjects(s, 10);
        p.api.C_FindObjectsFinal(s);
        expect(found, type).toHaveLength(1);
        const priv = found[0]!;
        // The secret itself: CKA_VALUE for EC, the private exponent and primes for RSA.
        const secrets = type.startsWith('ec') ? [pkcs11js.CKA_VALUE] : [pkcs11js.CKA_PRIVATE_EXPONENT, pkcs11js.CKA_PRIME_1, pkcs11js.CKA_PRIME_2];
        for (const secret of secrets) {
          expect(() => p.api.C_GetAttributeValue(s, priv, [{ type: secret }]), type).toThrow(/CKR_ATTRIBUTE_SENSITIVE/);
        }
        const boolAttrs = [
          pkcs11js.CKA_TOKEN,
          pkcs11js.CKA_PRIVATE,
          pkcs11js.CKA_SENSITIVE,
          pkcs11js.CKA_EXTRACTABLE,
          pkcs11js.CKA_SIGN,
          pkcs11js.CKA_DECRYPT,
          pkcs11js.CKA_UNWRAP,
          pkcs11js.CKA_DERIVE,
          pkcs11js.CKA_NEVER_EXTRACTABLE,
          pkcs11js.CKA_LOCAL,
        ];
        const v = p.api.C_GetAttributeValue(s, priv, boolAttrs.map((type) => ({ type }))).map((a) => a.value[0]);
        expect(v, type).toEqual([1, 1, 1, 0, 1, 0, 0, 0, 1, 1]);
        expect(key.id).toHaveLength(16);
      }
    } finally {
      p.api.C_CloseSession(s);
      p.release();
    }
  });

  it('pkcs11-tool (OpenSC) lists the keys with label, id and sign-only, never-extractable access', async () => {
    const { stdout } = await run(
      'pkcs11-tool',
      ['--module', t.tok.module, '--token-label', 'keel', '--login', '--pin', t.tok.pin, '--list-objects', '--type', 'privkey'],
      { env: t.tok.env },
    );
    const blocks = stdout.split(/\n(?=Private Key Object)/);
    for (const [type, key] of keys) {
      const block = blocks.find((b) => b.includes(`label:      test-${type}`));
      expect(block, type).toBeDefined();
      expect(block).toContain(type.startsWith('ec') ? 'Private Key Object; EC' : 'Private Key Object; RSA');
      expect(block).toContain(`ID:         ${key.id.toString('hex')}`);
      expect(block).toMatch(/Usage:\s+sign\n/);
      expect(block).toContain('Access:     sensitive, always sensitive, never extractable, local');
    }
  });

  const cases: Array<[HsmKeyType, HsmAlgorithm]> = [
    ['ec-p256', 'ES256'],
    ['ec-p384', 'ES384'],
    ['rsa-2048', 'RS256'],
    ['rsa-2048', 'RS384'],
    ['rsa-2048', 'PS256'],
    ['rsa-2048', 'PS384'],
    ['rsa-3072', 'RS256'],
    ['rsa-3072', 'PS384'],
  ];
  it.each(cases)('%s signs %s and node:crypto verifies it (and not a tampered message)', async (type, alg) => {
    const key = keys.get(type)!;
    // Structural check: HsmSigner is usable wherever src/spiffe expects a Signer.
    const signer: Signer = hsm.signer(key, alg);
    expect(signer.algorithm).toBe(alg);
    expect(signer.keyId).toBe(key.id.toString('hex'));
    const sig = await signer.sign(DATA);
    expect(nodeVerify(key, alg, DATA, sig)).toBe(true);
    expect(nodeVerify(key, alg, Buffer.concat([DATA, Buffer.from('!')]), sig)).toBe(false);
  });

  it('openssl verifies ES256 (DER via p1363ToDer), ES384, RS256 and PS256 with the exported public key', async () => {
    const data = join(work, 'data');
    await writeFile(data, DATA);
    const checks: Array<[HsmKeyType, HsmAlgorithm, string[]]> = [
      ['ec-p256', 'ES256', []],
      ['ec-p384', 'ES384', []],
      ['rsa-2048', 'RS256', []],
      ['rsa-3072', 'PS256', ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32', '-sigopt', 'rsa_mgf1_md:sha256']],
    ];
    for (const [type, alg, opts] of checks) {
      const key = keys.get(type)!;
      const pem = join(work, `${type}.pem`);
      const sigFile = join(work, `${alg}.sig`);
      await writeFile(pem, key.publicKey.export({ type: 'spki', format: 'pem' }));
      const raw = await hsm.signer(key, alg).sign(DATA);
      await writeFile(sigFile, alg.startsWith('ES') ? p1363ToDer(raw) : raw);
      const md = alg.endsWith('256') ? '-sha256' : '-sha384';
      const { stdout } = await run('openssl', ['dgst', md, ...opts, '-verify', pem, '-signature', sigFile, data]);
      expect(stdout.trim(), `${type} ${alg}`).toBe('Verified OK');
    }
    // The same with pkeyutl over the digest, for RS256.
    const key = keys.get('rsa-2048')!;
    const dgst = join(work, 'digest');
    await writeFile(dgst, createHash('sha256').update(DATA).digest());
    const sig = join(work, 'rs256.sig');
    await writeFile(sig, await hsm.signer(key, 'RS256').sign(DATA));
    const { stdout } = await run('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', join(work, 'rsa-2048.pem'), '-in', dgst, '-sigfile', sig, '-pkeyopt', 'digest:sha256']);
    expect(stdout).toContain('Signature Verified Successfully');
  });

  it('refuses algorithms that do not fit the key', () => {
    expect(() => hsm.signer(keys.get('ec-p256')!, 'ES384')).toThrow(HsmAlgorithmError);
    expect(() => hsm.signer(keys.get('ec-p384')!, 'ES256')).toThrow(HsmAlgorithmError);
    expect(() => hsm.signer(keys.get('rsa-2048')!, 'ES256')).toThrow(HsmAlgorithmError);
    expect(() => hsm.signer(keys.get('ec-p256')!, 'RS256')).toThrow(HsmAlgorithmError);
  });

  it('finds, lists and destroys keys by label and id; refuses a second key with the same label or id', async () => {
    const a = await hsm.generateKey({ label: 'tmp-a', type: 'ec-p256', id: Buffer.from('a1a1', 'hex') });
    expect(a.id.toString('hex')).toBe('a1a1');
    await expect(hsm.generateKey({ label: 'tmp-a', type: 'ec-p384' })).rejects.toThrow(HsmKeyExistsError);
    await expect(hsm.generateKey({ label: 'tmp-b', type: 'ec-p256', id: Buffer.from('a1a1', 'hex') })).rejects.toThrow(HsmKeyExistsError);
    const byLabel = await hsm.findKey({ label: 'tmp-a' });
    const byId = await hsm.findKey({ id: Buffer.from('a1a1', 'hex') });
    for (const k of [byLabel, byId]) {
      expect(k?.type).toBe('ec-p256');
      expect(k?.publicKey.equals(a.publicKey)).toBe(true);
    }
    expect((await hsm.listKeys({ labelPrefix: 'test-' })).map((k) => k.label)).toEqual(['test-ec-p256', 'test-ec-p384', 'test-rsa-2048', 'test-rsa-3072']);
    await hsm.destroyKey(a);
    expect(await hsm.findKey({ label: 'tmp-a' })).toBeUndefined();
    expect((await hsm.listKeys({ labelPrefix: 'tmp-' })).length).toBe(0);
  });

  it('a new process finds the key by label after a restart and signs; the parent verifies with the key it saw before', async () => {
    for (const type of ['ec-p256', 'rsa-2048'] as const) {
      const key = keys.get(type)!;
      const { stdout } = await run(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'fixtures', 'sign-child.ts')], {
        env: {
          ...t.tok.env,
          [t.pinEnv]: t.tok.pin,
          KEEL_MODULE: t.tok.module,
          KEEL_TOKEN: 'keel',
          KEEL_PIN_ENV: t.pinEnv,
          KEEL_KEY_LABEL: `test-${type}`,
          KEEL_DATA_HEX: DATA.toString('hex'),
        },
        cwd: join(import.meta.dirname, '..', '..'),
      });
      const out = JSON.parse(stdout) as { type: string; id: string; signature: string };
      expect(out.type).toBe(type);
      expect(out.id).toBe(key.id.toString('hex'));
      expect(nodeVerify(key, type === 'ec-p256' ? 'ES256' : 'RS256', DATA, Buffer.from(out.signature, 'base64'))).toBe(true);
    }
  });
});
