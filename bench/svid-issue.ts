/**
 * SVID issuance rate of the CA with its keys in SoftHSM, against the limits
 * measured in the same run on the same key: the raw pkcs11js async C_Sign
 * rate (SHA-256 in Node + CKM_ECDSA, one session per signature in flight),
 * and Node's in-memory ECDSA P-256.
 *
 *   node --import tsx bench/svid-issue.ts [seconds per sample, default 1]
 *
 * Goal: X.509-SVIDs from ready (parsed) CSRs at ≥ 70% of the raw HSM sign rate.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { KeyObject } from 'node:crypto';
import type { CaKeyStore, CaKeyHandle } from '../src/server/ca/index.js';

const CONCURRENCY = [1, 2, 4, 8];
const SECONDS = Number(process.argv[2] ?? 1);
/** Each cell is the median of this many samples, taken in turns with the others so drift on a shared machine hits all alike. */
const ROUNDS = 3;

// Async C_Sign runs on the libuv pool; size it before anything starts it.
if (!process.env.UV_THREADPOOL_SIZE) {
  const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, UV_THREADPOOL_SIZE: String(Math.max(...CONCURRENCY)) },
  });
  process.exit(r.status ?? 1);
}

const { createHash, createPublicKey, generateKeyPairSync, sign, webcrypto } = await import('node:crypto');
const pkcs11js = (await import('pkcs11js')).default;
const { createSoftHsmToken } = await import('../simulator/softhsm.js');
const { Hsm } = await import('../src/hsm/index.js');
const { Pkcs11Module } = await import('../src/hsm/module.js');
const { CertificateAuthority, MemoryCaJournal, parseCsr, signerFromPrivateKey } = await import('../src/server/ca/index.js');
const { AsnConvert } = await import('@peculiar/asn1-schema');
const { CertificationRequest, CertificationRequestInfo, Attributes } = await import('@peculiar/asn1-csr');
const { AlgorithmIdentifier, Name, SubjectPublicKeyInfo } = await import('@peculiar/asn1-x509');

/** Runs `op` with `c` loops in flight for SECONDS; returns operations per second. */
async function rate(c: number, op: (worker: number) => Promise<unknown>): Promise<number> {
  // Short warm-up so JIT and session caches settle.
  const warm = Date.now() + 200;
  await Promise.all(Array.from({ length: c }, async (_, w) => { while (Date.now() < warm) await op(w); }));
  let n = 0;
  const start = process.hrtime.bigint();
  const end = Date.now() + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: c }, async (_, w) => {
      while (Date.now() < end) {
        await op(w);
        n++;
      }
    }),
  );
  return n / (Number(process.hrtime.bigint() - start) / 1e9);
}

function makeCsr(priv: KeyObject): Buffer {
  const info = new CertificationRequestInfo({
    version: 0,
    subject: new Name(),
    subjectPKInfo: AsnConvert.parse(createPublicKey(priv).export({ format: 'der', type: 'spki' }), SubjectPublicKeyInfo),
    attributes: new Attributes(),
  });
  const infoDer = Buffer.from(AsnConvert.serialize(info));
  const sig = sign('sha256', infoDer, priv);
  return Buffer.from(AsnConvert.serialize(new CertificationRequest({ certificationRequestInfo: info, signatureAlgorithm: new AlgorithmIdentifier({ algorithm: '1.2.840.10045.4.3.2' }), signature: new Uint8Array(sig).buffer })));
}

/** The same CA code over in-memory keys: shows what the CA costs when signing is Node's. */
class MemoryKeys implements CaKeyStore {
  private readonly priv = new Map<string, KeyObject>();
  async generateKey(o: { label: string; id?: Buffer; type: CaKeyHandle['type'] }): Promise<CaKeyHandle> {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    this.priv.set(o.label, privateKey);
    return { label: o.label, id: o.id ?? Buffer.alloc(16), type: 'ec-p256', publicKey };
  }
  async findKey(): Promise<undefined> {
    return undefined;
  }
  async destroyKey(): Promise<void> {}
  signer(k: CaKeyHandle) {
    return signerFromPrivateKey(this.priv.get(k.label)!);
  }
}

const tok = await createSoftHsmToken({ label: 'keel-bench' });
process.env.SOFTHSM2_CONF = tok.conf;
process.env.KEEL_BENCH_PIN = tok.pin;
const maxC = Math.max(...CONCURRENCY);
const hsm = await Hsm.open({ module: tok.module, token: { label: tok.label }, pin: { env: 'KEEL_BENCH_PIN' }, sessions: maxC });
try {
  const caOptions = {
    trustDomain: 'example.org',
    journal: new MemoryCaJournal(),
    rotationCheckIntervalMs: 0,
    x509: { caTtlSeconds: 7 * 86_400, svidMaxTtlSeconds: 3_600 },
    jwt: { keyTtlSeconds: 7 * 86_400, svidMaxTtlSeconds: 600 },
  };
  const ca = await CertificateAuthority.open({ ...caOptions, keys: hsm });
  const memCa = await CertificateAuthority.open({ ...caOptions, journal: new MemoryCaJournal(), keys: new MemoryKeys() });

  // Raw pkcs11js on the very key the CA signs with: own sessions, one per signature in flight.
  const mod = Pkcs11Module.acquire(tok.module);
  const api = mod.api;
  const slot = api.C_GetSlotList(true).find((s) => api.C_GetTokenInfo(s).label.trimEnd() === tok.label)!;
  const sessions = Array.from({ length: maxC }, () => api.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION));
  const caKey = (await hsm.findKey({ label: 'keel-x509-ca-1' }))!;
  api.C_FindObjectsInit(sessions[0]!, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }, { type: pkcs11js.CKA_ID, value: caKey.id }]);
  const [keyHandle] = api.C_FindObjects(sessions[0]!, 1);
  api.C_FindObjectsFinal(sessions[0]!);
  if (!keyHandle) throw new Error('CA key not found');
  const tbsLike = Buffer.alloc(420, 0x5a);
  const rawSign = (w: number): Promise<Buffer> => {
    const s = sessions[w]!;
    const digest = createHash('sha256').update(tbsLike).digest();
    api.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, keyHandle);
    return new Promise((resolve, reject) => {
      const out = Buffer.alloc(64);
      api.C_Sign(s, digest, out, (err, sig) => (err ? reject(err) : resolve(sig)));
    });
  };

  // Node in memory: sync crypto.sign (one thread) and WebCrypto (threadpool) at each concurrency.
  const nodeKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const webKey = await webcrypto.subtle.importKey('pkcs8', nodeKey.export({ format: 'der', type: 'pkcs8' }), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);

  const csrDers = Array.from({ length: 64 }, () => makeCsr(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey));
  const csrs = csrDers.map((d) => parseCsr(d));
  let k = 0;
  const next = <T>(xs: T[]): T => xs[k++ % xs.length]!;
  const issue = (c: typeof ca) => () => c.issueX509Svid({ csr: next(csrs), spiffeId: 'spiffe://example.org/ns/bench/sa/w', dnsNames: ['w.example.org'], ttlSeconds: 3600 });

  const syncNode = await rate(1, async () => sign('sha256', tbsLike, { key: nodeKey, dsaEncoding: 'ieee-p1363' }));
  const rows: string[] = [];
  rows.push('| concurrency | raw pkcs11js sign/s | X.509-SVID/s (parsed CSR) | % of raw | X.509-SVID/s (DER CSR, parse+verify) | % of raw | JWT-SVID/s | % of raw | WebCrypto ECDSA/s | CA over in-memory key, X.509-SVID/s |');
  rows.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const c of CONCURRENCY) {
    const cells = { raw: [] as number[], x509: [] as number[], x509Der: [] as number[], jwt: [] as number[], web: [] as number[], mem: [] as number[] };
    for (let r = 0; r < ROUNDS; r++) {
      cells.raw.push(await rate(c, rawSign));
      cells.x509.push(await rate(c, issue(ca)));
      cells.x509Der.push(await rate(c, () => ca.issueX509Svid({ csr: next(csrDers), spiffeId: 'spiffe://example.org/ns/bench/sa/w', dnsNames: ['w.example.org'], ttlSeconds: 3600 })));
      cells.jwt.push(await rate(c, () => ca.mintJwtSvid({ spiffeId: 'spiffe://example.org/ns/bench/sa/w', audience: 'bench', ttlSeconds: 300 })));
      cells.web.push(await rate(c, () => webcrypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, webKey, tbsLike)));
      cells.mem.push(await rate(c, issue(memCa)));
    }
    const [raw, x509, x509Der, jwt, web, mem] = [cells.raw, cells.x509, cells.x509Der, cells.jwt, cells.web, cells.mem].map(median) as [number, number, number, number, number, number];
    const pct = (x: number): string => `${((100 * x) / raw).toFixed(0)}%`;
    rows.push(`| ${c} | ${raw.toFixed(0)} | ${x509.toFixed(0)} | ${pct(x509)} | ${x509Der.toFixed(0)} | ${pct(x509Der)} | ${jwt.toFixed(0)} | ${pct(jwt)} | ${web.toFixed(0)} | ${mem.toFixed(0)} |`);
  }
  console.log(`\nSVID issuance, CA key ECDSA P-256 in SoftHSM (${tok.module}), median of ${ROUNDS} × ${SECONDS}s per cell, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE}\n`);
  console.log(rows.join('\n'));
  console.log(`\nNode crypto.sign ECDSA P-256 (in memory, sync, 1 thread): ${syncNode.toFixed(0)}/s\n`);

  for (const s of sessions) api.C_CloseSession(s);
  mod.release();
  await ca.close();
  await memCa.close();
} finally {
  await hsm.close();
  await tok.destroy();
}
