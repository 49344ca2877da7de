/** keel's Node API client constructor, loaded from proto/node.proto. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** Same options as the server: snake_case fields, bytes as Buffer, int64 as number, oneof name set. */
const OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true };

function protoPath(): string {
  for (const rel of ['../../../proto/node.proto', '../../../../proto/node.proto']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new Error('proto/node.proto not found next to the keel sources');
}

let cached: grpc.ServiceClientConstructor | undefined;

export function nodeApiClientConstructor(): grpc.ServiceClientConstructor {
  if (!cached) {
    const def = protoLoader.loadSync(protoPath(), OPTIONS);
    cached = (grpc.loadPackageDefinition(def) as unknown as { keel: { node: { v1: { NodeAPI: grpc.ServiceClientConstructor } } } }).keel.node.v1.NodeAPI;
  }
  return cached;
}
