/** The agent's node attestation client and its Node API client. */
export {
  attestNode,
  renewAgentSvid,
  checkNode,
  type CheckNodeOptions,
  quoteForChallenge,
  AgentAttestationError,
  AgentClockError,
  MAX_EVENT_LOG_BYTES,
  type AttestNodeOptions,
  type RenewAgentSvidOptions,
  type AgentSvid,
  type ServerConnection,
} from './attest.js';
export { buildCsr, CsrKeyError } from '../../spiffe/csr.js';
export { tpmAgentKey, softwareAgentKey, credentialOf, type AgentCredential, type AgentKey } from './credential.js';
export { BoundChannelCredentials, BindingRefusedError, ServerCertificateError, verifyServerChain, pemCertificates, type ServerCertificateFailure, type ServerCaEndorsement } from './bound-credentials.js';
export {
  NodeApiClient,
  NodeApiError,
  runExchange,
  signJwtSvidCall,
  signWitSvidCall,
  signX509SvidsCall,
  type Exchange,
  type ExchangeMethod,
  type NodeApiClientOptions,
  type WireAnswer,
  type WireAttestResult,
  type WireChallenge,
  type WireEntry,
  type WireParams,
  type WireSyncEntries,
  type WireX509SvidResult,
} from './node-api-client.js';
