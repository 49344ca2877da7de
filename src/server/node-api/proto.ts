/** keel's Node API service definition, loaded from proto/node.proto. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** How every side loads the proto: snake_case fields, bytes as Buffer, int64 as number, oneof names set. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true };

/** proto/ sits at the repository root; from dist/ it is one level further up. */
function protoPath(): string {
  for (const rel of ['../../../proto/node.proto', '../../../../proto/node.proto']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new Error('proto/node.proto not found next to the keel sources');
}

let cached: grpc.ServiceDefinition | undefined;

export function nodeApiService(): grpc.ServiceDefinition {
  if (!cached) {
    const def = protoLoader.loadSync(protoPath(), PROTO_LOADER_OPTIONS);
    cached = (grpc.loadPackageDefinition(def) as unknown as { keel: { node: { v1: { NodeAPI: { service: grpc.ServiceDefinition } } } } }).keel.node.v1.NodeAPI.service;
  }
  return cached;
}
