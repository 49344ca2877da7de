/**
 * The Node API's channel binding: what ties a TLS connection to an agent
 * whose private key never leaves its TPM (Node's TLS cannot sign with a key
 * it does not hold, so the agent cannot present its SVID as a client
 * certificate).
 *
 * Right after the TLS 1.3 handshake, before HTTP/2 starts, the client sends
 * one binding frame and waits for the server's answer:
 *
 *   client → server  "KEELBND1" | u8 kind | u32 length | payload
 *     kind 0 (anonymous): empty payload; only Attest is served on the connection.
 *     kind 1 (agent):     u8 n | n × (u32 len | DER certificate), leaf first
 *                         | u16 len | DER ECDSA signature
 *   server → client  "KEELBND1" | u8 status (0 bound, 1 refused) | u16 length | UTF-8 JSON {reason, detail}
 *
 * The signature is ECDSA-SHA256 by the agent SVID's key over
 * BINDING_CONTEXT || EKM, where EKM is the connection's RFC 8446 §7.5
 * exporter value (label EKM_LABEL, 32 bytes, no context). Only the two ends
 * of this TLS session can compute the EKM, so a signature replayed on another
 * connection, or relayed by a machine-in-the-middle, does not verify. One
 * TPM signature per connection, none per call.
 */
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

const BINDING_MAGIC = Buffer.from('KEELBND1', 'ascii');
const EKM_LABEL = 'EXPORTER-keel-node-api-channel-binding';
const EKM_BYTES = 32;
const BINDING_CONTEXT = Buffer.from('keel node API channel binding v1\0', 'ascii');
/** Certificates in a chain, bytes of a binding frame: far above a real agent's, far below a memory problem. */
const MAX_BINDING_CERTS = 8;
const MAX_BINDING_BYTES = 32 * 1024;
const MAX_ANSWER_BYTES = 4096;

export type BindingRequest =
  | { readonly kind: 'anonymous' }
  | { readonly kind: 'agent'; readonly chain: readonly Buffer[]; readonly signature: Buffer };

export type BindingAnswer = { readonly bound: true } | { readonly bound: false; readonly reason: string; readonly detail: string };

/** A binding frame that does not parse, came too slowly, or a connection that ended first. */
export class ChannelBindingError extends Error {
  override readonly name = 'ChannelBindingError';
  constructor(
    readonly reason: 'malformed' | 'too-large' | 'timeout' | 'closed',
    detail: string,
  ) {
    super(`channel binding: ${detail}`);
  }
}

/** What the agent signs for a connection: the context string and the connection's exporter value. */
export function bindingMessage(socket: TLSSocket): Buffer {
  return Buffer.concat([BINDING_CONTEXT, socket.exportKeyingMaterial(EKM_BYTES, EKM_LABEL, Buffer.alloc(0))]);
}

export function encodeBindingRequest(req: BindingRequest): Buffer {
  let payload = Buffer.alloc(0);
  if (req.kind === 'agent') {
    if (req.chain.length === 0 || req.chain.length > MAX_BINDING_CERTS) throw new RangeError(`a binding carries 1..${MAX_BINDING_CERTS} certificates`);
    const parts: Buffer[] = [Buffer.from([req.chain.length])];
    for (const c of req.chain) {
      const len = Buffer.alloc(4);
      len.writeUInt32BE(c.length);
      parts.push(len, c);
    }
    const sl = Buffer.alloc(2);
    sl.writeUInt16BE(req.signature.length);
    parts.push(sl, req.signature);
    payload = Buffer.concat(parts);
  }
  if (payload.length > MAX_BINDING_BYTES) throw new RangeError('the binding frame is too large');
  const head = Buffer.alloc(BINDING_MAGIC.length + 5);
  BINDING_MAGIC.copy(head);
  head[BINDING_MAGIC.length] = req.kind === 'agent' ? 1 : 0;
  head.writeUInt32BE(payload.length, BINDING_MAGIC.length + 1);
  return Buffer.concat([head, payload]);
}

/** Parses the payload of a binding frame of `kind`; ChannelBindingError('malformed') names what is wrong. */
function decodeBindingPayload(kind: number, payload: Buffer): BindingRequest {
  const bad = (detail: string): never => {
    throw new ChannelBindingError('malformed', detail);
  };
  if (kind === 0) {
    if (payload.length !== 0) bad('an anonymous binding carries no payload');
    return { kind: 'anonymous' };
  }
  if (kind !== 1) bad(`unknown binding kind ${kind}`);
  let at = 0;
  const take = (n: number, what: string): Buffer => {
    if (at + n > payload.length) bad(`${what} runs past the end of the frame`);
    const b = payload.subarray(at, at + n);
    at += n;
    return b;
  };
  const n = take(1, 'certificate count')[0]!;
  if (n === 0 || n > MAX_BINDING_CERTS) bad(`${n} certificates, want 1..${MAX_BINDING_CERTS}`);
  const chain: Buffer[] = [];
  for (let i = 0; i < n; i++) chain.push(Buffer.from(take(take(4, `certificate ${i} length`).readUInt32BE(0), `certificate ${i}`)));
  const signature = Buffer.from(take(take(2, 'signature length').readUInt16BE(0), 'signature'));
  if (signature.length === 0) bad('the signature is empty');
  if (at !== payload.length) bad(`${payload.length - at} bytes after the signature`);
  return { kind: 'agent', chain, signature };
}

export function encodeBindingAnswer(a: BindingAnswer): Buffer {
  const body = a.bound ? Buffer.alloc(0) : Buffer.from(JSON.stringify({ reason: a.reason, detail: a.detail.slice(0, 1024) }), 'utf8');
  const head = Buffer.alloc(BINDING_MAGIC.length + 3);
  BINDING_MAGIC.copy(head);
  head[BINDING_MAGIC.length] = a.bound ? 0 : 1;
  head.writeUInt16BE(body.length, BINDING_MAGIC.length + 1);
  return Buffer.concat([head, body]);
}

/**
 * Reads exactly `n` bytes from a paused socket, leaving anything after them
 * buffered for whoever reads next (HTTP/2 takes over the socket after the frame).
 */
function readExactly(socket: Socket, n: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | undefined, b?: Buffer): void => {
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('close', onClose);
      socket.off('error', onClose);
      if (err) reject(err);
      else resolve(b!);
    };
    const onReadable = (): void => {
      const b = socket.read(n) as Buffer | null;
      if (b) done(undefined, b);
      else if (socket.readableEnded) onClose();
    };
    const onClose = (): void => done(new ChannelBindingError('closed', 'the connection ended during the binding'));
    const timer = setTimeout(() => done(new ChannelBindingError('timeout', `no binding within ${timeoutMs} ms`)), timeoutMs);
    socket.on('readable', onReadable);
    socket.once('close', onClose);
    socket.once('error', onClose);
    if (n === 0) done(undefined, Buffer.alloc(0));
    else onReadable();
  });
}

function checkMagic(b: Buffer): void {
  if (!b.subarray(0, BINDING_MAGIC.length).equals(BINDING_MAGIC)) throw new ChannelBindingError('malformed', 'not a keel channel binding (bad magic)');
}

/** Server side: reads one binding frame. */
export async function readBindingRequest(socket: Socket, timeoutMs: number): Promise<BindingRequest> {
  const deadline = Date.now() + timeoutMs;
  const head = await readExactly(socket, BINDING_MAGIC.length + 5, timeoutMs);
  checkMagic(head);
  const len = head.readUInt32BE(BINDING_MAGIC.length + 1);
  if (len > MAX_BINDING_BYTES) throw new ChannelBindingError('too-large', `a binding frame of ${len} bytes, limit ${MAX_BINDING_BYTES}`);
  const payload = await readExactly(socket, len, Math.max(1, deadline - Date.now()));
  return decodeBindingPayload(head[BINDING_MAGIC.length]!, payload);
}

/** Client side: reads the server's answer to the binding. */
export async function readBindingAnswer(socket: Socket, timeoutMs: number): Promise<BindingAnswer> {
  const head = await readExactly(socket, BINDING_MAGIC.length + 3, timeoutMs);
  checkMagic(head);
  const status = head[BINDING_MAGIC.length]!;
  const len = head.readUInt16BE(BINDING_MAGIC.length + 1);
  if (len > MAX_ANSWER_BYTES) throw new ChannelBindingError('too-large', 'the binding answer is too large');
  const body = await readExactly(socket, len, timeoutMs);
  if (status === 0) return { bound: true };
  try {
    const j = JSON.parse(body.toString('utf8')) as { reason?: unknown; detail?: unknown };
    return { bound: false, reason: String(j.reason ?? 'refused'), detail: String(j.detail ?? '') };
  } catch {
    return { bound: false, reason: 'refused', detail: 'the server refused the channel binding' };
  }
}
