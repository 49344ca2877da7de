/**
 * What the SVID manager asks of the server: the three mTLS calls of keel's
 * Node API. src/agent/node-client.ts implements it over gRPC; unit tests use
 * fakes.
 */
import type { NodeApiError, WireSyncEntries, WireX509SvidResult } from '../attestation/index.js';

export interface SyncHandlers {
  /** A full snapshot of the authorized entries and the bundles. */
  onUpdate(update: WireSyncEntries): void;
  /** The stream ended (server gone, refused, or closed); the caller reconnects. Called at most once. */
  onEnd(error: NodeApiError): void;
}

export interface NodeApi {
  /** Opens the SyncEntries stream; returns the way to cancel it (after which no handler is called). */
  syncEntries(handlers: SyncHandlers): () => void;
  /** One SignX509Svids call for the whole batch. Rejects with NodeApiError. */
  signX509Svids(requests: readonly { readonly entryId: string; readonly csr: Buffer }[]): Promise<WireX509SvidResult[]>;
  /** Rejects with NodeApiError. */
  signJwtSvid(entryId: string, audience: readonly string[]): Promise<{ token: string; expiresAt: Date }>;
  /** A WIT-SVID of the entry for `publicKeyJwk` (JWK JSON with alg). Optional: servers without the WIT profile lack it. Rejects with NodeApiError. */
  signWitSvid?(entryId: string, publicKeyJwk: string): Promise<{ token: string; expiresAt: Date }>;
}
