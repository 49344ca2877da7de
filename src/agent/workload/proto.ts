/**
 * The SPIFFE Workload API service definition, loaded from proto/workload.proto
 * at the repository root (found by walking up to package.json, so it works
 * from src/ under tsx and from dist/ after a build).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadSync, type Options } from '@grpc/proto-loader';
import { loadPackageDefinition, type ServiceDefinition } from '@grpc/grpc-js';
import { WorkloadApiStartError } from './errors.js';
import { repoRoot } from '../../proto/load.js';

export { repoRoot };

/** How messages look in JS: field names as in the proto (snake_case), bytes as Buffer. */
export const PROTO_LOADER_OPTIONS: Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

export function workloadProtoPath(): string {
  return join(repoRoot(), 'proto', 'workload.proto');
}

let cached: ServiceDefinition | undefined;

/** The `SpiffeWorkloadAPI` service (method paths `/SpiffeWorkloadAPI/<Method>`: the proto has no package). */
export function workloadServiceDefinition(): ServiceDefinition {
  if (cached) return cached;
  const path = workloadProtoPath();
  if (!existsSync(path)) throw new WorkloadApiStartError('proto-missing', '', `${path} does not exist`);
  const pkg = loadPackageDefinition(loadSync(path, PROTO_LOADER_OPTIONS));
  const ctor = pkg.SpiffeWorkloadAPI as { service?: ServiceDefinition } | undefined;
  if (!ctor?.service) throw new WorkloadApiStartError('proto-missing', '', `${path} defines no SpiffeWorkloadAPI service`);
  cached = ctor.service;
  return cached;
}
