/**
 * The attestor is the parser of everything an unauthenticated agent sends.
 * Property tests: arbitrary, truncated and oversized params and answers end
 * in a typed AttestationError with a known reason, never another exception,
 * and never a node record. Pure logic: the EK and AK are software keys, the
 * store is a real SQLite file, and the CA is a stub that must never be reached.
 */
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { buildCsr } from '../../src/agent/attestation/index.js';
import { ATTESTATION_REASONS, AttestationError, Attestor, type PendingAttestation } from '../../src/server/attestation/index.js';
import { SqliteDatastore } from '../../src/server/store/index.js';
import { memoryAuditLog } from '../../src/log/index.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { TPM_ALG, TPMA_OBJECT, checkAgentKeyPublic, checkAkPublic, ekPublicHash, marshalTpmtPublic, parseTpmtPublic, tpmtPublicFromPublicKey } from '../../src/tpm/index.js';
import { parseCsr } from '../../src/server/ca/index.js';

const EK_ATTRS = 0x000300b2;
const AK_ATTRS = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

const ek = tpmtPublicFromPublicKey(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey, {
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: EK_ATTRS,
  symmetric: { algorithm: TPM_ALG.AES, keyBits: 128, mode: TPM_ALG.CFB },
});
const ak = tpmtPublicFromPublicKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, {
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: AK_ATTRS,
  scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
});
const AGENT_KEY_ATTRS = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.sign;
const agentPrivate = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const agentKey = tpmtPublicFromPublicKey(createPublicKey(agentPrivate), {
  nameAlg: TPM_ALG.SHA256,
  objectAttributes: AGENT_KEY_ATTRS,
  scheme: { scheme: TPM_ALG.ECDSA, hashAlg: TPM_ALG.SHA256 },
});
const ekBytes = marshalTpmtPublic(ek);
const akBytes = marshalTpmtPublic(ak);
const agentKeyBytes = marshalTpmtPublic(agentKey);
const csr = buildCsr(agentPrivate);

let dir: string;
let store: SqliteDatastore;
let attestor: Attestor;
const reasons = new Set<string>(ATTESTATION_REASONS);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keel-attest-fuzz-'));
  store = SqliteDatastore.open({ path: join(dir, 'keel.db') });
  attestor = new Attestor({
    trustDomain: TrustDomain.parse('example.org'),
    store,
    ca: {
      issueX509Svid: () => Promise.reject(new Error('the CA must not be reached by a forged attestation')),
      bundle: () => {
        throw new Error('the CA must not be reached by a forged attestation');
      },
    },
    ekAdmission: { manufacturerCas: [], allowList: new Set([ekPublicHash(ek)]) },
    policy: { evaluate: () => ({ ok: true, selectors: ['tpm:policy:any'] }) },
    pcrSelection: { bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] },
    nonceTtlSeconds: 60,
    agentSvidTtlSeconds: 600,
    maxEventLogBytes: 64 * 1024,
    audit: memoryAuditLog(),
  });
});
afterAll(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

async function refusal(p: Promise<unknown>): Promise<AttestationError> {
  const e = await p.then(
    () => new Error('accepted'),
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(AttestationError);
  expect(reasons.has((e as AttestationError).reason)).toBe(true);
  return e as AttestationError;
}

/** The honest bytes, cut short, grown, bit-flipped or replaced. */
const mangled = (good: Buffer): fc.Arbitrary<Buffer> =>
  fc.oneof(
    fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
    fc.nat({ max: good.length }).map((n) => good.subarray(0, n)),
    fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => Buffer.concat([good, b])),
    fc.tuple(fc.nat({ max: good.length - 1 }), fc.integer({ min: 1, max: 255 })).map(([i, x]) => {
      const c = Buffer.from(good);
      c[i]! ^= x;
      return c;
    }),
    fc.integer({ min: 20_000, max: 200_000 }).map((n) => Buffer.alloc(n, 0x41)),
  );

describe('Attestor.begin with mangled params', () => {
  it('the honest software EK/AK/CSR pass begin (so the properties below exercise the checks, not a broken fixture)', async () => {
    const { challenge } = await attestor.begin({ ekPublic: ekBytes, akPublic: akBytes, csr, agentKeyPublic: agentKeyBytes });
    expect(challenge.nonce).toHaveLength(32);
  });

  it('refuses any mangled EK public, AK public or CSR with a typed reason and records nothing', async () => {
    const good = { ekPublic: ekBytes, akPublic: akBytes, csr, agentKeyPublic: agentKeyBytes };
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          mangled(ekBytes).map((v) => ['ekPublic', v] as const),
          mangled(akBytes).map((v) => ['akPublic', v] as const),
          mangled(csr).map((v) => ['csr', v] as const),
          mangled(agentKeyBytes).map((v) => ['agentKeyPublic', v] as const),
        ),
        async ([field, value]) => {
          fc.pre(!value.equals(good[field]));
          const r = await attestor.begin({ ...good, [field]: value }).then(
            () => undefined,
            (x: unknown) => x,
          );
          if (r === undefined) {
            // Accepted only when the change left a well-formed structure that admits the same thing:
            // a flip in an EK attribute bit keeps the EK's key (its identity); an AK or CSR must still check out.
            if (field === 'ekPublic') expect(ekPublicHash(parseTpmtPublic(value))).toBe(ekPublicHash(ek));
            if (field === 'akPublic') expect(() => checkAkPublic(parseTpmtPublic(value))).not.toThrow();
            if (field === 'csr') expect(() => parseCsr(value)).not.toThrow();
            // An attribute flip that keeps an unrestricted, fixedTPM signing key for the CSR's key is still that key.
            if (field === 'agentKeyPublic') expect(() => checkAgentKeyPublic(parseTpmtPublic(value))).not.toThrow();
          } else {
            expect(r).toBeInstanceOf(AttestationError);
            expect(reasons.has((r as AttestationError).reason)).toBe(true);
          }
          expect((await store.listNodes()).items).toHaveLength(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('refuses non-byte values where bytes belong', async () => {
    for (const bad of [42, 'text', {}, [1, 2], null]) {
      const e = await refusal(attestor.begin({ ekPublic: ekBytes, akPublic: bad as never, csr, agentKeyPublic: agentKeyBytes }));
      expect(e.reason).toBe('malformed');
    }
  });
});

describe('Attestor.complete with mangled answers', () => {
  it('refuses arbitrary quotes, signatures, PCR values and event logs with a typed reason', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 1500 }),
        fc.uint8Array({ maxLength: 1500 }),
        fc.array(fc.tuple(fc.constantFrom('sha1', 'sha256', 'bogus'), fc.array(fc.tuple(fc.nat({ max: 40 }), fc.uint8Array({ maxLength: 80 })), { maxLength: 10 })), { maxLength: 6 }),
        fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ maxLength: 4000 }), fc.constant(new Uint8Array(70_000))),
        fc.boolean(),
        async (quote, signature, banks, eventLog, rightSecret) => {
          const { state } = await attestor.begin({ ekPublic: ekBytes, akPublic: akBytes, csr, agentKeyPublic: agentKeyBytes });
          const e = await refusal(
            attestor.complete(state as PendingAttestation, {
              secret: rightSecret ? state.secret : Buffer.alloc(32),
              quote,
              quoteSignature: signature,
              pcrValues: banks.map(([bank, vals]) => ({ bank, values: new Map(vals.map(([i, v]) => [i, Buffer.from(v)])) })),
              eventLog,
            }),
          );
          if (!rightSecret) expect(e.reason).toBe('secret-mismatch');
          expect((await store.consumeNonce(state.nonce.toString('hex'), new Date())).kind).toBe('used');
          expect((await store.listNodes()).items).toHaveLength(0);
        },
      ),
      { numRuns: 200 },
    );
  });
});
