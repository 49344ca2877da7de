/**
 * Loading keel's .proto files (proto/ at the repository root, found by walking
 * up to package.json, so it works from src/ under tsx and from dist/ after a
 * build) the same way on every side.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** Field names as in the proto (snake_case), bytes as Buffer, int64 as number, oneof names set. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true };

export class ProtoMissingError extends Error {
  override readonly name = 'ProtoMissingError';
}

export function repoRoot(from: string = fileURLToPath(import.meta.url)): string {
  let dir = dirname(from);
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new ProtoMissingError(`no package.json above ${from}`);
    dir = up;
  }
}

export function protoPath(file: string): string {
  const p = join(repoRoot(), 'proto', file);
  if (!existsSync(p)) throw new ProtoMissingError(`${p} does not exist`);
  return p;
}

export function loadProto(file: string, options: protoLoader.Options = PROTO_LOADER_OPTIONS): grpc.GrpcObject {
  return grpc.loadPackageDefinition(protoLoader.loadSync(protoPath(file), options));
}
