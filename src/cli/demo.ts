/**
 * `keel demo`: the story on a simulated machine. It starts what it needs
 * (swtpm with its own manufacturer CA), proves the node's TPM the way keel's
 * server does, prints each step, and stops everything it started.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { startSwtpm } from '../../simulator/swtpm.js';
import { TpmDevice } from '../tpm/device.js';
import {
  TPM_ALG, checkAkPublic, ekCertificateMatches, ekPublicHash, makeCredential, objectName, parseTpmtPublic,
  pcrSelection, publicKeyFromTpmtPublic, unwrapEkCertificate, verifyEkCertificate, verifyQuote,
} from '../tpm/index.js';
import { parseFlags, type Command } from './command.js';

function step(n: number, title: string, detail: string[] = []): void {
  console.log(`\n[${n}] ${title}`);
  for (const d of detail) console.log(`    ${d}`);
}

export async function tpmRoundTrip(trustDomain: string): Promise<void> {
  const sim = await startSwtpm();
  const dev = await TpmDevice.open(sim.tcti);
  try {
    step(1, 'Simulated TPM started', [`swtpm ${sim.tcti}`, `manufacturer CA: ${new X509Certificate(sim.manufacturerCaPems[0]!).subject.replace(/\n/g, ', ')}`]);

    const ekPub = parseTpmtPublic(await dev.ekPublic('rsa-2048'));
    const certDer = unwrapEkCertificate((await dev.ekCertificate('rsa-2048'))!);
    const [root, issuer] = sim.manufacturerCaPems.map((p) => new X509Certificate(p));
    const { certificate } = verifyEkCertificate(certDer, { roots: [root!], intermediates: [issuer!] });
    if (!ekCertificateMatches(certificate, ekPub)) throw new Error('EK certificate does not match the EK');
    const ekHash = ekPublicHash(publicKeyFromTpmtPublic(ekPub));
    step(2, 'Endorsement Key admitted by its manufacturer certificate chain', [
      `EK: RSA-2048, certificate from NV 0x01c00002 issued by ${certificate.issuer.replace(/\n/g, ', ')}`,
      `EK hash (sha256 of the EK public key): ${ekHash}`,
    ]);

    const blobs = await dev.createAk('rsa-2048', 'ecc-p256');
    const akPub = checkAkPublic(parseTpmtPublic(blobs.public));
    const ak = await dev.loadAk('rsa-2048', blobs);
    const secret = randomBytes(32);
    const cred = makeCredential(ekPub, objectName(akPub), secret);
    const answer = await dev.activateCredential(ak, 'rsa-2048', cred.credentialBlob, cred.encryptedSecret);
    if (!answer.equals(secret)) throw new Error('credential activation returned another secret');
    step(3, 'Attestation Key bound to the EK by credential activation', [
      `AK: ECC P-256, restricted signing key, name ${objectName(akPub).toString('hex').slice(0, 20)}…`,
      'the server encrypted a secret to the EK for that AK name (MakeCredential in software);',
      'only this TPM, holding both keys, could recover it: it did',
    ]);

    const pcrs = [0, 1, 2, 3, 4, 5, 6, 7];
    const nonce = randomBytes(32);
    const sel = [{ bank: 'sha256' as const, pcrs }];
    const q = await dev.quote(ak, sel, nonce);
    const values = (await dev.pcrRead(sel)).get('sha256')!;
    const verified = verifyQuote({
      akPublic: akPub, attest: q.attest, signature: q.signature, nonce,
      expectedSelection: pcrSelection({ hashAlg: TPM_ALG.SHA256, pcrs }), pcrValues: pcrs.map((p) => values.get(p)!),
    });
    await dev.flush(ak);
    step(4, 'Quote over PCRs 0-7 (sha256) verified with a fresh nonce', [
      `signature by the AK, extraData = nonce, pcrDigest = H(PCR values)`,
      `TPM clock ${verified.clockInfo.clock} ms, resets ${verified.clockInfo.resetCount}, restarts ${verified.clockInfo.restartCount}`,
      `swtpm has no measured boot: its PCRs are all zero, which only the development policy accepts`,
    ]);
    step(5, 'Node identity', [`spiffe://${trustDomain}/keel/agent/tpm/${ekHash}`]);
  } finally {
    await dev.close();
    await sim.stop();
  }
}

export const demo: Command = {
  usage: '[--trust-domain example.org]',
  description: 'Runs keel end to end on a simulated TPM and HSM and prints what it proved.',
  async run(argv) {
    const { values } = parseFlags(argv, { 'trust-domain': { type: 'string', default: 'example.org' } });
    await tpmRoundTrip(values['trust-domain']!);
    console.log('\nDemo finished: everything it started has been stopped.');
    return 0;
  },
};
