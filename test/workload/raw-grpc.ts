/**
 * A minimal gRPC client over a socket we already hold (grpc-js cannot take
 * one): HTTP/2 from node:http2, the 5-byte gRPC message framing, and the
 * proto's own (de)serializers. Used where the test needs a connection that
 * another process opened and handed over.
 */
import { connect, type ClientHttp2Session } from 'node:http2';
import type { Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { PROTO_LOADER_OPTIONS, workloadProtoPath } from '../../src/agent/workload/proto.js';

const service = (() => {
  const pkg = grpc.loadPackageDefinition(loadSync(workloadProtoPath(), PROTO_LOADER_OPTIONS));
  return (pkg.SpiffeWorkloadAPI as unknown as { service: grpc.ServiceDefinition }).service;
})();

export function sessionOver(socket: Socket): ClientHttp2Session {
  return connect('http://localhost', { createConnection: () => socket });
}

export interface RawCall<T> {
  readonly messages: T[];
  /** Resolves with the final status once the call ends. */
  readonly done: Promise<{ code: number; details: string }>;
  /** Resolves when `n` messages have arrived (rejects if the call ends first). */
  waitFor(n: number): Promise<void>;
}

export function rawCall<T>(session: ClientHttp2Session, method: string, request: object, headerValue: string | null = 'true'): RawCall<T> {
  const def = service[method]!;
  const body = def.requestSerialize(request) as Buffer;
  const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), body]);
  frame.writeUInt32BE(body.length, 1);
  const stream = session.request({
    ':method': 'POST',
    ':path': `/SpiffeWorkloadAPI/${method}`,
    'content-type': 'application/grpc',
    te: 'trailers',
    ...(headerValue === null ? {} : { 'workload.spiffe.io': headerValue }),
  });
  stream.end(frame);
  const messages: T[] = [];
  const waiters: { n: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  let buf = Buffer.alloc(0);
  stream.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
      const len = buf.readUInt32BE(1);
      messages.push(def.responseDeserialize(buf.subarray(5, 5 + len)) as T);
      buf = buf.subarray(5 + len);
    }
    for (const w of waiters.filter((x) => messages.length >= x.n)) w.resolve();
  });
  const done = new Promise<{ code: number; details: string }>((resolve) => {
    let status: { code: number; details: string } | undefined;
    const take = (h: Record<string, unknown>) => {
      if (h['grpc-status'] !== undefined) status = { code: Number(h['grpc-status']), details: decodeURIComponent(String(h['grpc-message'] ?? '')) };
    };
    stream.on('response', take);
    stream.on('trailers', take);
    stream.on('close', () => resolve(status ?? { code: grpc.status.UNKNOWN, details: `stream closed (rst ${stream.rstCode})` }));
    stream.on('error', () => undefined);
  });
  void done.then(() => {
    for (const w of waiters) w.reject(new Error(`call ended with ${messages.length} messages`));
  });
  return {
    messages,
    done,
    waitFor: (n) =>
      messages.length >= n ? Promise.resolve() : new Promise<void>((resolve, reject) => waiters.push({ n, resolve, reject })),
  };
}
