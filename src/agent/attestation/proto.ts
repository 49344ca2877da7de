/** keel's Node API client constructor (shared with the server through src/proto). */
export { nodeApiClientConstructor } from '../../proto/index.js';
