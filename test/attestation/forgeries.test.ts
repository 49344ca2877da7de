/**
 * A corpus of forged and tampered attestations against the real server (Node
 * API over TLS on a TCP port, SoftHSM CA, SQLite store), made from the real
 * answers of two swtpms: A, whose manufacturer CA the server trusts, and B,
 * whose CA it does not. Each is refused with its reason; the node table is
 * unchanged, the one audit line names the reason, and the nonce was spent
 * exactly when a challenge was issued.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { buildCsrWithSigner } from '../../src/spiffe/csr.js';
import {
  NodeApiClient,
  NodeApiError,
  attestNode,
  buildCsr,
  credentialOf,
  softwareAgentKey,
  BoundChannelCredentials,
  type AgentCredential,
  quoteForChallenge,
  type AgentSvid,
  type WireAnswer,
  type WireChallenge,
  type WireParams,
} from '../../src/agent/attestation/index.js';
import { nodeApiClientConstructor } from '../../src/agent/attestation/proto.js';
import { AttestationError } from '../../src/server/attestation/index.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { TPMA_OBJECT, ekPublicHash, marshalTpmtPublic, parseTpmtPublic } from '../../src/tpm/index.js';
import type { AkBlobs, AkHandle } from '../../src/tpm/device.js';
import { parseSelector } from '../../src/server/store/index.js';
import type { CertificateAuthority } from '../../src/server/ca/index.js';
import { HsmFixture, TD, openCa, snapshot, startServer, startTpm, type TestServer, type TestTpm } from './harness.js';

const FAR_FUTURE = new Date(8.64e15);
const MAX_EVENT_LOG = 256 * 1024;
const EVENT_LOG = new URL('../data/eventlogs/rhel8-uefi.bin', import.meta.url).pathname;

let hsm: HsmFixture;
let A: TestTpm;
let B: TestTpm;
let server: TestServer;
let otherCa: CertificateAuthority;
let akA: { blobs: AkBlobs; handle: AkHandle };
/** A second AK of A, loaded only while used (swtpm has 3 object slots). */
let akA2: AkBlobs;
let akB: { blobs: AkBlobs; handle: AkHandle };
let ekA: Buffer;
let ekCertA: Buffer;
let ekB: Buffer;
let ekCertB: Buffer;
let eccCertA: Buffer;
/** A key in process memory: for workload CSRs, and for forgers who have no TPM key. */
const softKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
/** A's honest CSR: for A's agent key, signed in A's TPM. */
let csrA: Buffer;
let attested: AgentSvid;

async function loadAk(t: TestTpm): Promise<{ blobs: AkBlobs; handle: AkHandle }> {
  const blobs = await t.device.createAk('rsa-2048', 'ecc-p256');
  return { blobs, handle: await t.device.loadAk('rsa-2048', blobs) };
}

/** Runs `fn` with an AK loaded, then flushes it. */
async function withAk<T>(t: TestTpm, ek: 'rsa-2048' | 'ecc-p384', blobs: AkBlobs, fn: (h: AkHandle) => Promise<T>): Promise<T> {
  const h = await t.device.loadAk(ek, blobs);
  try {
    return await fn(h);
  } finally {
    await t.device.flush(h);
  }
}

beforeAll(async () => {
  hsm = await HsmFixture.create();
  [A, B] = await Promise.all([startTpm(), startTpm()]);
  server = await startServer(hsm.hsm, { manufacturerCaPems: A.sim.manufacturerCaPems, maxEventLogBytes: MAX_EVENT_LOG, nonceTtlSeconds: 60 });
  otherCa = await openCa(hsm.hsm, 'other.org');
  akA2 = await A.device.createAk('rsa-2048', 'ecc-p256');
  akA = await loadAk(A);
  akB = await loadAk(B);
  ekA = await A.device.ekPublic('rsa-2048');
  ekCertA = (await A.device.ekCertificate('rsa-2048'))!;
  eccCertA = (await A.device.ekCertificate('ecc-p384'))!;
  ekB = await B.device.ekPublic('rsa-2048');
  ekCertB = (await B.device.ekCertificate('rsa-2048'))!;
  // An honest node (A's ECC EK, its own AK) for the renewal and banning cases.
  csrA = await buildCsrWithSigner(A.key.publicKey, (d) => A.key.sign(d));
  attested = await attestNode({ device: A.device, ekKind: 'ecc-p384', agentKey: A.agentKey, serverAddress: server.address, serverCaBundle: server.caPem, trustDomain: TD });
});
afterAll(async () => {
  await server?.close();
  await otherCa?.close();
  await A?.close();
  await B?.close();
  await hsm?.close();
});

// ── the forger's tools ─────────────────────────────────────────────────────

const honestParams = (): WireParams => ({ ek_public: ekA, ek_certificate: ekCertA, ak_public: akA.blobs.public, csr: csrA, agent_key_public: A.agentKey.public });

/** TPM2_Certify of A's agent key by `ak` over the challenge's nonce. */
async function certified(ch: WireChallenge, ak: AkHandle = akA.handle, t: TestTpm = A): Promise<WireAnswer> {
  const c = await t.device.certify(t.agentKey, ak, ch.nonce);
  return { agent_key_certify: c.attest, agent_key_certify_signature: c.signature };
}

async function honestAnswer(ch: WireChallenge): Promise<WireAnswer> {
  const secret = await A.device.activateCredential(akA.handle, 'rsa-2048', ch.credential_blob, ch.encrypted_secret);
  return { secret, ...(await quoteForChallenge(A.device, akA.handle, akA.blobs.public, ch)), ...(await certified(ch)) };
}

interface Track {
  nonce?: Buffer;
}

function client(svid?: AgentCredential): NodeApiClient {
  return new NodeApiClient({ address: server.address, serverCaBundle: server.caPem, trustDomain: TD, ...(svid ? { clientSvid: svid } : {}) });
}

/** Attest with `params` (default: honest A) answering with `answer(challenge)` (default: honest A). */
function forge(
  params: Partial<WireParams> = {},
  answer: (ch: WireChallenge) => Promise<WireAnswer> = honestAnswer,
  method: 'Attest' | 'RenewAgent' = 'Attest',
  svid?: AgentCredential,
) {
  return async (track: Track): Promise<unknown> => {
    const c = client(svid);
    try {
      return await c.exchange(method, { ...honestParams(), ...params }, async (ch) => {
        track.nonce = ch.nonce;
        return answer(ch);
      });
    } finally {
      c.close();
    }
  };
}

const renewParams = (): Partial<WireParams> => ({ ek_public: Buffer.alloc(0), ek_certificate: Buffer.alloc(0), ak_public: attestedAk().public });
let attestedAkBlobs: AkBlobs;
const attestedAk = (): AkBlobs => attestedAkBlobs;
const attestedSvid = (): AgentCredential => A.credential(attested.svidChain);

type Stage = 'begin' | 'complete' | 'none';

/** Runs one forgery and checks everything a refusal must leave behind. */
async function expectRefused(
  reason: string,
  attempt: (t: Track) => Promise<unknown>,
  stage: Stage,
  event = 'node.attestation_refused',
  /** What the caller sees when it is not the server's reason (it gave up itself). */
  callerReason = reason,
): Promise<void> {
  const before = snapshot(await server.nodes());
  await server.store.pruneNonces(FAR_FUTURE);
  server.takeAudit();
  const track: Track = {};
  const err = await attempt(track).then(
    () => new Error('the forgery was accepted'),
    (e: unknown) => e,
  );
  expect(err, String(err)).toBeInstanceOf(Error);
  expect((err as NodeApiError | AttestationError).reason, (err as Error).message).toBe(callerReason);
  const audit = await settledAudit();
  expect(audit.map((e) => [e.event, (e as { reason?: string }).reason])).toEqual([[event, reason]]);
  expect(snapshot(await server.nodes())).toBe(before);
  if (stage === 'begin') {
    expect(track.nonce).toBeUndefined();
    expect(await server.store.pruneNonces(FAR_FUTURE)).toBe(0);
  } else if (stage === 'complete') {
    expect((await server.store.consumeNonce(track.nonce!.toString('hex'), new Date())).kind).toBe('used');
  }
}

/** Audit lines once the server has finished writing them (a cancelled stream ends asynchronously there). */
async function settledAudit() {
  const end = Date.now() + 3000;
  let got = server.takeAudit();
  while (got.length === 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 20));
    got = server.takeAudit();
  }
  return got;
}

const flip = (b: Buffer, at: number): Buffer => {
  const c = Buffer.from(b);
  c[at < 0 ? c.length + at : at]! ^= 0x01;
  return c;
};

function akWithAttributes(blobs: AkBlobs, change: (a: number) => number): Buffer {
  const pub = parseTpmtPublic(blobs.public);
  return marshalTpmtPublic({ ...pub, objectAttributes: change(pub.objectAttributes) >>> 0 });
}

async function withAnswer(mutate: (a: WireAnswer, ch: WireChallenge) => WireAnswer | Promise<WireAnswer>): Promise<(ch: WireChallenge) => Promise<WireAnswer>> {
  return async (ch) => mutate(await honestAnswer(ch), ch);
}

// ── the corpus ─────────────────────────────────────────────────────────────

describe('EK and AK admission (refused before any challenge)', () => {
  it('EK certificate from an untrusted manufacturer CA (another swtpm\'s)', () =>
    expectRefused('ek-untrusted', forge({ ek_public: ekB, ek_certificate: ekCertB, ak_public: akB.blobs.public }), 'begin'));
  it('EK without a certificate and not on the allow-list', () => expectRefused('ek-not-allowed', forge({ ek_certificate: Buffer.alloc(0) }), 'begin'));
  it('EK certificate that certifies another key than the EK public (A\'s P-384 cert with A\'s RSA EK)', () =>
    expectRefused('ek-cert-mismatch', forge({ ek_certificate: eccCertA }), 'begin'));
  it('EK certificate of TPM A sent with the EK public of TPM B', () => expectRefused('ek-cert-mismatch', forge({ ek_public: ekB }), 'begin'));
  it('AK without restricted', () => expectRefused('ak-invalid', forge({ ak_public: akWithAttributes(akA.blobs, (a) => a & ~TPMA_OBJECT.restricted) }), 'begin'));
  it('AK without fixedTPM', () => expectRefused('ak-invalid', forge({ ak_public: akWithAttributes(akA.blobs, (a) => a & ~TPMA_OBJECT.fixedTPM) }), 'begin'));
  it('AK that can also decrypt', () => expectRefused('ak-invalid', forge({ ak_public: akWithAttributes(akA.blobs, (a) => a | TPMA_OBJECT.decrypt) }), 'begin'));
  it('the EK offered as AK', () => expectRefused('ak-invalid', forge({ ak_public: ekA }), 'begin'));
  it('garbage EK public', () => expectRefused('malformed', forge({ ek_public: randomBytes(300) }), 'begin'));
  it('truncated EK public', () => expectRefused('malformed', forge({ ek_public: ekA.subarray(0, ekA.length - 7) }), 'begin'));
  it('truncated AK public', () => expectRefused('malformed', forge({ ak_public: akA.blobs.public.subarray(0, 40) }), 'begin'));
  it('AK public with trailing bytes', () => expectRefused('malformed', forge({ ak_public: Buffer.concat([akA.blobs.public, Buffer.from([0])]) }), 'begin'));
  it('garbage EK certificate', () => expectRefused('malformed', forge({ ek_certificate: randomBytes(500) }), 'begin'));
  it('oversized EK public', () => expectRefused('too-large', forge({ ek_public: Buffer.alloc(5000, 1) }), 'begin'));
  it('CSR with a bad signature', () => expectRefused('csr-invalid', forge({ csr: flip(csrA, -4) }), 'begin'));
  it('garbage CSR', () => expectRefused('csr-invalid', forge({ csr: randomBytes(200) }), 'begin'));
  it('oversized CSR', () => expectRefused('too-large', forge({ csr: Buffer.alloc(20_000, 0x30) }), 'begin'));
  it('no CSR', () => expectRefused('malformed', forge({ csr: Buffer.alloc(0) }), 'begin'));
  it('a challenge response before any params', () => expectRefused('malformed', rawOutOfOrder, 'begin'));
  it('no agent key', () => expectRefused('malformed', forge({ agent_key_public: Buffer.alloc(0) }), 'begin'));
  it('the AK offered as agent key (restricted: it cannot sign a channel binding)', () => expectRefused('agent-key-invalid', forge({ agent_key_public: akA.blobs.public }), 'begin'));
  it('an agent key without fixedTPM (it could be duplicated off the TPM)', () =>
    expectRefused('agent-key-invalid', forge({ agent_key_public: akWithAttributes({ public: A.agentKey.public, private: Buffer.alloc(0) }, (a) => a & ~TPMA_OBJECT.fixedTPM) }), 'begin'));
  it('a CSR for a key in process memory next to the TPM agent key', () => expectRefused('agent-key-invalid', forge({ csr: buildCsr(softKey) }), 'begin'));
  it("B's agent key with A's CSR", () => expectRefused('agent-key-invalid', forge({ agent_key_public: B.agentKey.public }), 'begin'));
});

describe('the agent key (certified by the AK, or refused)', () => {
  it('no certification', async () =>
    expectRefused('agent-key-certify', forge({}, await withAnswer((a) => ({ ...a, agent_key_certify: Buffer.alloc(0), agent_key_certify_signature: Buffer.alloc(0) }))), 'complete'));
  it('a certification over another nonce', async () =>
    expectRefused('agent-key-certify', forge({}, await withAnswer(async (a, ch) => ({ ...a, ...(await certified({ ...ch, nonce: randomBytes(32) })) }))), 'complete'));
  it('a certification by another AK of the same TPM', async () =>
    expectRefused('agent-key-certify', forge({}, await withAnswer(async (a, ch) => ({ ...a, ...(await withAk(A, 'rsa-2048', akA2, (h) => certified(ch, h))) }))), 'complete'));
  it("the key of TPM B certified by B's AK, offered for A", async () =>
    expectRefused(
      'agent-key-certify',
      forge({ agent_key_public: A.agentKey.public }, await withAnswer(async (a, ch) => ({ ...a, ...(await certified(ch, akB.handle, B)) }))),
      'complete',
    ));
  it('one bit flipped in the certification', async () =>
    expectRefused('agent-key-certify', forge({}, await withAnswer((a) => ({ ...a, agent_key_certify: flip(a.agent_key_certify!, 30) }))), 'complete'));
});

describe('challenge answers (the nonce is spent by every answer)', () => {
  it('wrong secret', async () => expectRefused('secret-mismatch', forge({}, await withAnswer((a) => ({ ...a, secret: randomBytes(32) }))), 'complete'));
  it('an AK from another TPM than the EK: the second swtpm cannot activate the credential', async () => {
    let activationError: unknown;
    await expectRefused(
      'secret-mismatch',
      forge({ ak_public: akB.blobs.public }, async (ch) => {
        activationError = await B.device.activateCredential(akB.handle, 'rsa-2048', ch.credential_blob, ch.encrypted_secret).catch((e) => e);
        return { secret: randomBytes(32), ...(await quoteForChallenge(B.device, akB.handle, akB.blobs.public, ch)) };
      }),
      'complete',
    );
    expect(activationError).toBeInstanceOf(Error);
  });
  it('quote signed by another AK of the same TPM', async () =>
    expectRefused(
      'quote-signature',
      forge({}, async (ch) => {
        const secret = await A.device.activateCredential(akA.handle, 'rsa-2048', ch.credential_blob, ch.encrypted_secret);
        return { secret, ...(await withAk(A, 'rsa-2048', akA2, (h) => quoteForChallenge(A.device, h, akA2.public, ch))) };
      }),
      'complete',
    ));
  it('quote over another nonce', async () =>
    expectRefused('quote-nonce', forge({}, await withAnswer(async (a, ch) => ({ ...a, ...(await quoteForChallenge(A.device, akA.handle, akA.blobs.public, { ...ch, nonce: randomBytes(32) })) }))), 'complete'));
  it('a quote replayed from an earlier exchange', async () => {
    let old: WireAnswer | undefined;
    await forge({}, async (ch) => {
      old = await honestAnswer(ch);
      return { ...old, secret: Buffer.alloc(32) };
    })({}).catch(() => undefined);
    await expectRefused('quote-nonce', forge({}, await withAnswer((a) => ({ ...a, quote: old!.quote, quote_signature: old!.quote_signature }))), 'complete');
  });
  it('quote of a PCR selection other than the one asked (0-6)', async () =>
    expectRefused('quote-selection', forge({}, await withAnswer(async (a, ch) => ({ ...a, ...(await quoteForChallenge(A.device, akA.handle, akA.blobs.public, { ...ch, pcr_selection: [{ bank: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6] }] })) }))), 'complete'));
  it('quote of the sha1 bank with sha256 values', async () =>
    expectRefused(
      'quote-selection',
      forge({}, await withAnswer(async (a, ch) => {
        const q = await quoteForChallenge(A.device, akA.handle, akA.blobs.public, { ...ch, pcr_selection: [{ bank: 'sha1', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }] });
        return { ...a, quote: q.quote, quote_signature: q.quote_signature };
      })),
      'complete',
    ));
  it('PCR values that do not match the quoted digest', async () =>
    expectRefused('pcr-digest', forge({}, await withAnswer((a) => ({ ...a, pcr_values: [{ bank: 'sha256', values: { ...a.pcr_values![0]!.values, '3': Buffer.alloc(32, 0xab) } }] }))), 'complete'));
  it('a PCR value missing', async () =>
    expectRefused(
      'pcr-digest',
      forge({}, await withAnswer((a) => {
        const { '7': _gone, ...rest } = a.pcr_values![0]!.values;
        return { ...a, pcr_values: [{ bank: 'sha256', values: rest }] };
      })),
      'complete',
    ));
  it('values for a bank that was not asked for', async () =>
    expectRefused('pcr-digest', forge({}, await withAnswer((a) => ({ ...a, pcr_values: [...a.pcr_values!, { bank: 'sha1', values: { '0': Buffer.alloc(20) } }] }))), 'complete'));
  it('one bit flipped in the attest bytes', async () => expectRefused('quote-signature', forge({}, await withAnswer((a) => ({ ...a, quote: flip(a.quote!, 40) }))), 'complete'));
  it('one bit flipped in the signature', async () => expectRefused('quote-signature', forge({}, await withAnswer((a) => ({ ...a, quote_signature: flip(a.quote_signature!, -3) }))), 'complete'));
  it('garbage TPMS_ATTEST', async () => expectRefused('quote-signature', forge({}, await withAnswer((a) => ({ ...a, quote: randomBytes(121) }))), 'complete'));
  it('truncated TPMT_SIGNATURE', async () => expectRefused('malformed', forge({}, await withAnswer((a) => ({ ...a, quote_signature: a.quote_signature!.subarray(0, 10) }))), 'complete'));
  it('garbage TPMT_SIGNATURE', async () => expectRefused('malformed', forge({}, await withAnswer((a) => ({ ...a, quote_signature: Buffer.from('ffff0000', 'hex') }))), 'complete'));
  it('oversized quote', async () => expectRefused('too-large', forge({}, await withAnswer((a) => ({ ...a, quote: Buffer.alloc(4096) }))), 'complete'));
  it('an event log that does not replay to the quoted PCRs (a real RHEL log, swtpm PCRs)', async () => {
    const log = await readFile(EVENT_LOG);
    await expectRefused('eventlog-replay', forge({}, await withAnswer((a) => ({ ...a, event_log: log }))), 'complete');
  });
  it('a garbage event log', async () => expectRefused('malformed', forge({}, await withAnswer((a) => ({ ...a, event_log: randomBytes(2000) }))), 'complete'));
  it('an event log over the configured cap', async () => expectRefused('too-large', forge({}, await withAnswer((a) => ({ ...a, event_log: Buffer.alloc(MAX_EVENT_LOG + 1) }))), 'complete'));
  it('an answer after the nonce expired', async () => {
    try {
      await expectRefused(
        'nonce-expired',
        forge({}, await withAnswer((a) => {
          server.clock.offsetMs = 61_000;
          return a;
        })),
        'none',
      );
    } finally {
      server.clock.offsetMs = 0;
    }
  });
  it('a stream abandoned after the challenge spends the nonce', () =>
    expectRefused(
      'malformed',
      forge({}, async () => {
        throw new NodeApiError('transport', grpc.status.CANCELLED, 'the forger gives up');
      }),
      'complete',
      'node.attestation_refused',
      'transport',
    ));
  it('the same challenge answered twice (Attestor, real swtpm answers)', async () => {
    const { challenge, state } = await server.attestor.begin({ ekPublic: ekA, ekCertificate: ekCertA, akPublic: akA.blobs.public, csr: csrA, agentKeyPublic: A.agentKey.public });
    const wire = await honestAnswer({ credential_blob: challenge.credentialBlob, encrypted_secret: challenge.encryptedSecret, nonce: challenge.nonce, pcr_selection: challenge.pcrSelection.map((s) => ({ bank: s.bank, pcrs: [...s.pcrs] })) });
    const answer = {
      secret: wire.secret!,
      quote: wire.quote!,
      quoteSignature: wire.quote_signature!,
      pcrValues: wire.pcr_values!.map((b) => ({ bank: b.bank, values: new Map(Object.entries(b.values).map(([k, v]) => [Number(k), v])) })),
      agentKeyCertify: wire.agent_key_certify!,
      agentKeyCertifySignature: wire.agent_key_certify_signature!,
    };
    // Spend it with a wrong secret first, then try the honest answer.
    const before = snapshot(await server.nodes());
    server.takeAudit();
    const first = await server.attestor.complete(state, { ...answer, secret: randomBytes(32) }).catch((e) => e);
    const second = await server.attestor.complete(state, answer).catch((e) => e);
    expect([(first as AttestationError).reason, (second as AttestationError).reason]).toEqual(['secret-mismatch', 'nonce-used']);
    expect(server.takeAudit().map((e) => (e as { reason: string }).reason)).toEqual(['secret-mismatch', 'nonce-used']);
    expect(snapshot(await server.nodes())).toBe(before);
  });
  it('a nonce the server never issued (Attestor)', async () => {
    const { state } = await server.attestor.begin({ ekPublic: ekA, ekCertificate: ekCertA, akPublic: akA.blobs.public, csr: csrA, agentKeyPublic: A.agentKey.public });
    await expectRefused('nonce-unknown', () => server.attestor.complete({ ...state, nonce: randomBytes(32) }, { secret: state.secret, quote: Buffer.alloc(0), quoteSignature: Buffer.alloc(0), pcrValues: [] }), 'none');
  });
});

describe('renewal and SVID calls (mTLS)', () => {
  beforeAll(() => {
    attestedAkBlobs = (attested as AgentSvid).akBlobs!;
  });
  const renewParamsWithKey = (): Partial<WireParams> => ({ ...renewParams(), csr: csrA, agent_key_public: A.agentKey.public });
  const renewAnswer = (ch: WireChallenge, blobs: AkBlobs): Promise<WireAnswer> =>
    withAk(A, 'ecc-p384', blobs, async (h) => ({ ...(await quoteForChallenge(A.device, h, blobs.public, ch)), ...(await certified(ch, h)) }));

  it('renewal with an SVID of another trust domain', async () => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const foreign = await otherCa.issueX509Svid({ csr: buildCsr(key), spiffeId: attested.spiffeId.replace(`//${TD}/`, '//other.org/'), ttlSeconds: 300 });
    await expectRefused('unauthenticated', forge(renewParamsWithKey(), (ch) => renewAnswer(ch, attestedAk()), 'RenewAgent', credentialOf([foreign.certDer], softwareAgentKey(key))), 'begin', 'node.connection_refused');
  });
  it('renewal on an anonymous connection', () =>
    expectRefused('unauthenticated', forge(renewParamsWithKey(), (ch) => renewAnswer(ch, attestedAk()), 'RenewAgent'), 'begin', 'node.renewal_refused'));
  it('renewal with a workload SVID (not an agent ID) of the right trust domain', async () => {
    const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const w = await server.ca.issueX509Svid({ csr: buildCsr(key), spiffeId: `spiffe://${TD}/web`, ttlSeconds: 300 });
    await expectRefused('unauthenticated', forge(renewParamsWithKey(), (ch) => renewAnswer(ch, attestedAk()), 'RenewAgent', credentialOf([w.certDer], softwareAgentKey(key))), 'begin', 'node.connection_refused');
  });
  it('the agent SVID copied off the node, used with a key that is not the TPM\'s', async () => {
    // The chain is genuine; the thief cannot sign the channel binding with the key it certifies.
    await expectRefused('unauthenticated', forge(renewParamsWithKey(), (ch) => renewAnswer(ch, attestedAk()), 'RenewAgent', credentialOf(attested.svidChain, softwareAgentKey(softKey))), 'begin', 'node.connection_refused');
  });
  it('renewal with another AK than the one the node attested with', () =>
    expectRefused('ak-changed', forge({ ...renewParamsWithKey(), ak_public: akA2.public }, (ch) => renewAnswer(ch, attestedAk()), 'RenewAgent', attestedSvid()), 'begin', 'node.renewal_refused'));
  it('renewal quoted by another AK than the one named', () =>
    expectRefused('quote-signature', forge(renewParamsWithKey(), (ch) => withAk(A, 'rsa-2048', akA2, (h) => quoteForChallenge(A.device, h, akA2.public, ch)), 'RenewAgent', attestedSvid()), 'complete', 'node.renewal_refused'));
  it('renewal for a key other than the TPM agent key (a CSR for a software key)', () =>
    expectRefused('agent-key-invalid', forge({ ...renewParamsWithKey(), csr: buildCsr(softKey) }, (ch) => renewAnswer(ch, attestedAk()), 'RenewAgent', attestedSvid()), 'begin', 'node.renewal_refused'));
  it('renewal without the certification of the agent key', () =>
    expectRefused('agent-key-certify', forge(renewParamsWithKey(), (ch) => withAk(A, 'ecc-p384', attestedAk(), (h) => quoteForChallenge(A.device, h, attestedAk().public, ch)), 'RenewAgent', attestedSvid()), 'complete', 'node.renewal_refused'));
  it('SignX509Svids for an entry the agent is not authorized for', async () => {
    const entry = await server.store.createEntry({ spiffeId: SpiffeId.parse(`spiffe://${TD}/not-yours`), parentId: SpiffeId.parse(`spiffe://${TD}/keel/agent/tpm/${'1'.repeat(64)}`), selectors: [parseSelector('unix:uid:0')] });
    server.takeAudit();
    const c = client(attestedSvid());
    try {
      const [r] = await c.signX509Svids([{ entryId: entry.id, csr: buildCsr(softKey) }]);
      expect(r).toMatchObject({ error: 'not-authorized', cert_chain: [] });
      expect(server.takeAudit()).toEqual([expect.objectContaining({ event: 'svid.refused', entryId: entry.id, reason: 'not-authorized' })]);
    } finally {
      c.close();
    }
  });
  it('SignX509Svids without a client certificate', async () => {
    server.takeAudit();
    const c = client();
    try {
      const e = await c.signX509Svids([{ entryId: 'x', csr: buildCsr(softKey) }]).catch((x) => x);
      expect((e as NodeApiError).reason).toBe('unauthenticated');
      expect(server.takeAudit()).toEqual([expect.objectContaining({ event: 'svid.refused', reason: 'unauthenticated' })]);
    } finally {
      c.close();
    }
  });
});

describe('state-changing cases (last)', () => {
  it('clock rollback: the node\'s last recorded quote is later than this one', async () => {
    // The node of A's RSA EK was last seen with a clock far ahead (as after a replay of an old TPM state).
    const agentId = server.attestor.agentIdFor(ekPublicHash(parseTpmtPublic(ekA)));
    await server.store.recordAttestation({
      agentId,
      ekPublicHash: agentId.path.split('/').pop()!,
      selectors: [parseSelector('tpm:policy:swtpm-dev')],
      svid: { serial: 'abcd', notAfter: new Date(Date.now() + 60_000) },
      quote: { clock: 1n << 50n, resetCount: 1000, restartCount: 0 },
    });
    await expectRefused('clock-rollback', forge(), 'complete');
  });
  it('a banned node', async () => {
    await server.store.banNode(SpiffeId.parse(attested.spiffeId), 'stolen');
    const eccEk = await A.device.ekPublic('ecc-p384');
    await expectRefused('banned', forge({ ek_public: eccEk, ek_certificate: eccCertA, ak_public: attestedAk().public }), 'begin');
  });
  it('a message over the transport limit is cut off by gRPC (RESOURCE_EXHAUSTED, nothing recorded)', async () => {
    const before = snapshot(await server.nodes());
    const err = await forge({}, await withAnswer((a) => ({ ...a, event_log: Buffer.alloc(MAX_EVENT_LOG + 300 * 1024) })))({}).catch((e) => e);
    expect((err as NodeApiError).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(snapshot(await server.nodes())).toBe(before);
  });
});

/** A raw stream that sends a challenge_response first. */
async function rawOutOfOrder(): Promise<unknown> {
  const Ctor = nodeApiClientConstructor();
  const c = new Ctor(server.address, new BoundChannelCredentials({ trustPem: () => server.caPem, serverId: `spiffe://${TD}/keel/server` }));
  try {
    return await new Promise((resolve, reject) => {
      const call = (c as unknown as { Attest: () => grpc.ClientDuplexStream<unknown, unknown> }).Attest();
      call.on('data', resolve);
      call.on('error', (e) => reject(NodeApiError.from(e)));
      call.write({ challenge_response: { secret: Buffer.alloc(32) } });
    });
  } finally {
    c.close();
  }
}
