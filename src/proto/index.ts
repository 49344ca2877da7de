/** keel's protocol definitions, shared by server, agent and CLI. */
export { PROTO_LOADER_OPTIONS, ProtoMissingError, loadProto, protoPath, repoRoot } from './load.js';
export * from './node-api.js';
