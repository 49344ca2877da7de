/**
 * PKCS#10 requests for SVIDs, made with the requester's own key (the agent's,
 * the server's TLS key). The subject is empty: the CA takes the identity from
 * attestation or from the registration entry; only the public key and the
 * proof of possession (the self-signature) count.
 */
import { sign, createPublicKey, type KeyObject } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Attributes, CertificationRequest, CertificationRequestInfo } from '@peculiar/asn1-csr';
import { AlgorithmIdentifier, Name, SubjectPublicKeyInfo } from '@peculiar/asn1-x509';

export class CsrKeyError extends Error {
  override readonly name = 'CsrKeyError';
}

const SIGNATURE: Record<string, { oid: string; hash: string; nullParams: boolean }> = {
  prime256v1: { oid: '1.2.840.10045.4.3.2', hash: 'sha256', nullParams: false },
  secp384r1: { oid: '1.2.840.10045.4.3.3', hash: 'sha384', nullParams: false },
  rsa: { oid: '1.2.840.113549.1.1.11', hash: 'sha256', nullParams: true },
};

function algorithmOf(key: KeyObject): { oid: string; hash: string; nullParams: boolean } {
  const kind = key.asymmetricKeyType === 'ec' ? key.asymmetricKeyDetails?.namedCurve ?? '' : key.asymmetricKeyType ?? '';
  const alg = SIGNATURE[kind];
  if (!alg) throw new CsrKeyError(`unsupported CSR key ${kind || 'type'}: use EC P-256, EC P-384 or RSA`);
  return alg;
}

/** A DER CSR signed with `privateKey` (EC P-256, EC P-384 or RSA). */
export function buildCsr(privateKey: KeyObject): Buffer {
  if (privateKey?.type !== 'private') throw new CsrKeyError('the CSR key must be a private KeyObject');
  const alg = algorithmOf(privateKey);
  const info = requestInfo(createPublicKey(privateKey));
  return assemble(info, alg, sign(alg.hash, Buffer.from(AsnConvert.serialize(info)), privateKey));
}

/**
 * A DER CSR for `publicKey` whose private key lives elsewhere (the agent's
 * key in the TPM): `signDer` signs the request info with the algorithm's
 * hash and returns the DER signature.
 */
export async function buildCsrWithSigner(publicKey: KeyObject, signDer: (tbs: Buffer, hash: string) => Promise<Buffer>): Promise<Buffer> {
  if (publicKey?.type !== 'public') throw new CsrKeyError('the CSR key must be a public KeyObject');
  const alg = algorithmOf(publicKey);
  const info = requestInfo(publicKey);
  return assemble(info, alg, await signDer(Buffer.from(AsnConvert.serialize(info)), alg.hash));
}

function requestInfo(publicKey: KeyObject): CertificationRequestInfo {
  const spki = AsnConvert.parse(publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo);
  return new CertificationRequestInfo({ version: 0, subject: new Name([]), subjectPKInfo: spki, attributes: new Attributes() });
}

function assemble(info: CertificationRequestInfo, alg: { oid: string; nullParams: boolean }, signature: Buffer): Buffer {
  const csr = new CertificationRequest({
    certificationRequestInfo: info,
    signatureAlgorithm: new AlgorithmIdentifier({ algorithm: alg.oid, parameters: alg.nullParams ? null : undefined }),
    signature: new Uint8Array(signature).buffer,
  });
  return Buffer.from(AsnConvert.serialize(csr));
}
