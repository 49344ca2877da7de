/**
 * The whole TPM half of attestation, end to end with a real swtpm: a real
 * measured-boot log is replayed into the TPM by PCR extends through keel's
 * addon; the verifier side (no TPM) admits the EK by its certificate chain,
 * challenges the AK with a software MakeCredential, and verifies the quote and
 * the log against the quoted PCRs.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSwtpm, type Swtpm } from '../../simulator/swtpm.js';
import { TpmDevice, type AkHandle } from '../../src/tpm/device.js';
import {
  TPM_ALG, checkAkPublic, ekCertificateMatches, makeCredential, objectName, parseTpmtPublic, pcrSelection,
  unwrapEkCertificate, verifyEkCertificate, verifyQuote, QuoteVerificationError,
} from '../../src/tpm/index.js';
import { EventLogReplayError, EventType, LOG_ONLY_PCR, eventDigest, parseEventLog, verifyReplay } from '../../src/tpm/eventlog/index.js';

const LOG = parseEventLog(readFileSync(join(import.meta.dirname, '../data/eventlogs/rhel8-uefi.bin')));
const PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14];

describe('TPM round trip: replayed log, credential activation, quote, verification', () => {
  let sim: Swtpm;
  let dev: TpmDevice;
  let ak: AkHandle;
  let akPublic: ReturnType<typeof parseTpmtPublic>;

  beforeAll(async () => {
    sim = await startSwtpm({ pcrBanks: ['sha1', 'sha256'] });
    dev = await TpmDevice.open(sim.tcti);
    for (const e of LOG.events) {
      if (e.eventType === EventType.EV_NO_ACTION || e.pcrIndex === LOG_ONLY_PCR) continue;
      await dev.pcrExtend(e.pcrIndex, { sha1: eventDigest(e, 'sha1')!, sha256: eventDigest(e, 'sha256')! });
    }
    const blobs = await dev.createAk('rsa-2048', 'ecc-p256');
    // The addon hands out TPMT_PUBLIC (no TPM2B size prefix).
    akPublic = parseTpmtPublic(blobs.public);
    ak = await dev.loadAk('rsa-2048', blobs);
  });
  afterAll(async () => {
    await dev?.close();
    await sim?.stop();
  });

  it('admits the EK by its manufacturer chain and binds the AK to it by credential activation', async () => {
    const ekPub = parseTpmtPublic(await dev.ekPublic('rsa-2048'));
    const certDer = unwrapEkCertificate((await dev.ekCertificate('rsa-2048'))!);
    const roots = sim.manufacturerCaPems.map((p) => new X509Certificate(p));
    const { certificate } = verifyEkCertificate(certDer, { roots: [roots[0]!], intermediates: [roots[1]!] });
    expect(ekCertificateMatches(certificate, ekPub)).toBe(true);

    const akPub = checkAkPublic(akPublic);
    const secret = randomBytes(32);
    const cred = makeCredential(ekPub, objectName(akPub), secret);
    const recovered = await dev.activateCredential(ak, 'rsa-2048', cred.credentialBlob, cred.encryptedSecret);
    expect(recovered.equals(secret)).toBe(true);
  });

  it('verifies a quote over the replayed PCRs and the log against it; an unlogged extend is caught', async () => {
    const nonce = randomBytes(32);
    const sel = [{ bank: 'sha256' as const, pcrs: PCRS }];
    const q = await dev.quote(ak, sel, nonce);
    const values = (await dev.pcrRead(sel)).get('sha256')!;
    const expectedSelection = pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs: PCRS });
    const verified = verifyQuote({
      akPublic, attest: q.attest, signature: q.signature, nonce, expectedSelection,
      pcrValues: PCRS.map((p) => values.get(p)!),
    });
    expect(verified.attest.extraData.equals(nonce)).toBe(true);
    expect(verifyReplay(LOG, 'sha256', values).matched).toEqual(PCRS);

    // The same quote with another nonce is refused.
    expect(() =>
      verifyQuote({ akPublic, attest: q.attest, signature: q.signature, nonce: randomBytes(32), expectedSelection, pcrValues: PCRS.map((p) => values.get(p)!) }),
    ).toThrow(QuoteVerificationError);

    // A measurement the log does not show: the quote still verifies (the TPM
    // signed what it holds) but the log no longer replays to it.
    await dev.pcrExtend(4, { sha1: randomBytes(20), sha256: randomBytes(32) });
    const nonce2 = randomBytes(32);
    const q2 = await dev.quote(ak, sel, nonce2);
    const values2 = (await dev.pcrRead(sel)).get('sha256')!;
    verifyQuote({ akPublic, attest: q2.attest, signature: q2.signature, nonce: nonce2, expectedSelection, pcrValues: PCRS.map((p) => values2.get(p)!) });
    expect(() => verifyReplay(LOG, 'sha256', values2)).toThrow(EventLogReplayError);
  });
});
