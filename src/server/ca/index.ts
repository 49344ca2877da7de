export { CertificateAuthority } from './authority.js';
export type {
  CertificateAuthorityOptions,
  UpstreamAuthority,
  X509SvidRequest,
  IssuedX509Svid,
  JwtSvidRequest,
  IssuedJwtSvid,
  WitSvidRequest,
  IssuedWitSvid,
  AuthorityStatus,
} from './authority.js';
export { parseCsr, isParsedCsr, MAX_CSR_BYTES, subjectKeyIdOf } from './csr.js';
export type { ParsedCsr, CsrKeyType } from './csr.js';
export { CsrError, CaConfigError, CaIssueError, CaStateError, CaJournalWriteError } from './errors.js';
export type { CsrErrorReason } from './errors.js';
export { FileCaJournal, MemoryCaJournal, parseJournal } from './journal.js';
export type { CaJournal, CaJournalState, AuthorityState } from './journal.js';
export type { CaKeyStore, CaKeyHandle, CaKeyType } from './key-store.js';
export { DEFAULT_SCHEDULE, NO_PUBLICATION_RULES, nextRotationStep, deferredActivation, nextRotationTimeMs } from './rotation.js';
export type { RotationSchedule, RotationStep, AuthoritySlot, PublicationRules } from './rotation.js';
export { LeafTemplate, encodeTime } from './leaf-template.js';
export type { LeafFields } from './leaf-template.js';
export { buildCaCertificate, readCaCertificate, derToPem, pemToDers } from './ca-certificate.js';
export { signerFromPrivateKey } from './memory-signer.js';
