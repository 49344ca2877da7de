/** keel's SPIFFE rules: IDs, X509-SVID and JWT-SVID, bundles. Pure, no I/O. */
export * from './errors.js';
export * from './id.js';
export type { Signer, SignatureAlgorithm } from './signer.js';
export * from './bundle.js';
export * from './x509-svid.js';
export { KEY_USAGE, OID_CLIENT_AUTH, OID_SERVER_AUTH, readCertificateProfile, type CertificateProfile, type NameSubtree } from './x509-profile.js';
export * from './jwt-svid.js';
export * from './wit-svid.js';
export { parseDerCertificates, splitDer, concatDer, derToPem, DerSplitError } from './der.js';
export { parseStrictJson, StrictJsonError, type JsonValue, type JsonObject } from './json.js';
export { buildCsr, CsrKeyError } from './csr.js';
export { dnsNameProblem } from './dns-name.js';
export { normalizeJwtIssuer, normalizeOidcDomain } from './oidc.js';
