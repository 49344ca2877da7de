/** Helpers shared by the native-addon tests: tpm2-tools runs, temp files, minimal TPMT_PUBLIC reading. */
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Swtpm } from '../../simulator/swtpm.js';

const execFileP = promisify(execFile);

/** Runs a tpm2-tools command against the simulator; rejects on a non-zero exit. */
export async function tpm2(sim: Swtpm | undefined, tool: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  const env = sim ? sim.env : { ...process.env };
  const r = await execFileP(tool, args, { env, encoding: 'utf8', timeout: 30_000 });
  return { stdout: r.stdout, stderr: r.stderr };
}

/** Runs a tpm2-tools command and resolves with its exit code (never rejects on a failing exit). */
export async function tpm2Exit(sim: Swtpm | undefined, tool: string, args: string[]): Promise<number> {
  try {
    await tpm2(sim, tool, args);
    return 0;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    throw e;
  }
}

export async function tempDir(): Promise<{ dir: string; file: (name: string, data?: Buffer) => Promise<string>; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'keel-native-test-'));
  return {
    dir,
    async file(name, data) {
      const p = join(dir, name);
      if (data) await writeFile(p, data);
      return p;
    },
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** TPM2B_PUBLIC file contents (tss format) for a TPMT_PUBLIC. */
export function tpm2bPublic(tpmtPublic: Buffer): Buffer {
  const size = Buffer.alloc(2);
  size.writeUInt16BE(tpmtPublic.length);
  return Buffer.concat([size, tpmtPublic]);
}

/** nameAlg SHA-256 name of a TPMT_PUBLIC: 0x000b || SHA-256(bytes). */
export function sha256Name(tpmtPublic: Buffer): Buffer {
  return Buffer.concat([Buffer.from([0x00, 0x0b]), createHash('sha256').update(tpmtPublic).digest()]);
}

/**
 * Just enough of TPMT_PUBLIC to get the public key and a few fields out
 * (the real parser is src/tpm's; this one exists to cross-check the addon).
 */
export interface TestPublic {
  type: number;
  nameAlg: number;
  attributes: number;
  authPolicy: Buffer;
  key: KeyObject;
  curve?: number;
  keyBits?: number;
}

export function readTpmtPublic(b: Buffer): TestPublic {
  let o = 0;
  const u16 = (): number => {
    const v = b.readUInt16BE(o);
    o += 2;
    return v;
  };
  const u32 = (): number => {
    const v = b.readUInt32BE(o);
    o += 4;
    return v;
  };
  const tpm2b = (): Buffer => {
    const n = u16();
    const v = b.subarray(o, o + n);
    if (v.length !== n) throw new Error('truncated TPM2B');
    o += n;
    return v;
  };
  const type = u16();
  const nameAlg = u16();
  const attributes = u32();
  const authPolicy = tpm2b();
  const sym = u16();
  if (sym !== 0x0010) o += 4;
  const scheme = u16();
  if (scheme !== 0x0010) o += 2;
  const b64 = (x: Buffer): string => x.toString('base64url');
  if (type === 0x0001) {
    const keyBits = u16();
    const exp = u32() || 65537;
    const n = tpm2b();
    if (o !== b.length) throw new Error('trailing bytes after TPMT_PUBLIC');
    const e = Buffer.alloc(4);
    e.writeUInt32BE(exp);
    const key = createPublicKey({ key: { kty: 'RSA', n: b64(n), e: b64(e.subarray(e.findIndex((x) => x !== 0))) }, format: 'jwk' });
    return { type, nameAlg, attributes, authPolicy, key, keyBits };
  }
  if (type === 0x0023) {
    const curve = u16();
    const kdf = u16();
    if (kdf !== 0x0010) o += 2;
    const x = tpm2b();
    const y = tpm2b();
    if (o !== b.length) throw new Error('trailing bytes after TPMT_PUBLIC');
    const crv = curve === 0x0003 ? 'P-256' : curve === 0x0004 ? 'P-384' : 'unknown';
    const key = createPublicKey({ key: { kty: 'EC', crv, x: b64(x), y: b64(y) }, format: 'jwk' });
    return { type, nameAlg, attributes, authPolicy, key, curve };
  }
  throw new Error(`unexpected key type 0x${type.toString(16)}`);
}

/** A DER certificate as stored in NV: the SEQUENCE's own length tells where it ends (NV may pad). */
export function stripDerPadding(nv: Buffer): Buffer {
  if (nv[0] !== 0x30) throw new Error('not a DER SEQUENCE');
  const l = nv[1]!;
  if (l < 0x80) return nv.subarray(0, 2 + l);
  const n = l & 0x7f;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + nv[2 + i]!;
  return nv.subarray(0, 2 + n + len);
}

/** The tpm2_makecredential output file: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
export function parseCredentialFile(f: Buffer): { credentialBlob: Buffer; encryptedSecret: Buffer } {
  if (f.readUInt32BE(0) !== 0xbadcc0de || f.readUInt32BE(4) !== 1) throw new Error('not a tpm2-tools credential file');
  let o = 8;
  const n1 = f.readUInt16BE(o);
  const credentialBlob = f.subarray(o + 2, o + 2 + n1);
  o += 2 + n1;
  const n2 = f.readUInt16BE(o);
  const encryptedSecret = f.subarray(o + 2, o + 2 + n2);
  if (o + 2 + n2 !== f.length) throw new Error('trailing bytes in credential file');
  return { credentialBlob, encryptedSecret };
}

/**
 * Verifies a quote with tpm2_checkquote: signature by the AK, nonce, and the
 * PCR digest against values read by tpm2_pcrread from the same TPM.
 * Resolves with the tool's exit code. At most 7 PCRs: tpm2_checkquote 5.4
 * fails on a values file of 8 or more.
 */
export async function checkquote(
  sim: Swtpm,
  files: { file: (name: string, data?: Buffer) => Promise<string> },
  q: { akPublic: Buffer; attest: Buffer; signature: Buffer; nonce: Buffer; pcrs: number[] },
  tag: string,
): Promise<number> {
  if (q.pcrs.length > 7) throw new Error('tpm2_checkquote 5.4 cannot check 8 or more PCRs from a values file');
  const pub = await files.file(`${tag}.akpub`, tpm2bPublic(q.akPublic));
  const msg = await files.file(`${tag}.msg`, q.attest);
  const sig = await files.file(`${tag}.sig`, q.signature);
  const pcrs = await files.file(`${tag}.pcrs`);
  const list = `sha256:${q.pcrs.join(',')}`;
  await tpm2(sim, 'tpm2_pcrread', [list, '-o', pcrs]);
  return tpm2Exit(sim, 'tpm2_checkquote', ['-u', pub, '-m', msg, '-s', sig, '-f', pcrs, '-l', list, '-g', 'sha256', '-q', q.nonce.toString('hex')]);
}
