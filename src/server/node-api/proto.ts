/** keel's Node API service definition (shared with the agent through src/proto). */
export { nodeApiService, PROTO_LOADER_OPTIONS } from '../../proto/index.js';
