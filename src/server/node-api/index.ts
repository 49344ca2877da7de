/** keel's Node API: gRPC over TLS with the server's own SVID; mTLS for agents. */
export { NodeApiServer, MAX_SVID_BATCH, type NodeApiServerOptions, type NodeApiCa } from './server.js';
export { ServerIdentity, type ServerIdentityOptions } from './server-identity.js';
export { REASON_METADATA_KEY } from './wire.js';
