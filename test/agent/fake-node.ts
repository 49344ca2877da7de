/**
 * A fake Node API for the manager's unit tests: entries and bundles pushed by
 * the test, CSRs signed by an openssl CA, JWTs minted by src/spiffe with an
 * in-memory key, and a switch that makes the "server" unreachable.
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { NodeApiError, type WireEntry, type WireSyncEntries, type WireX509SvidResult } from '../../src/agent/attestation/index.js';
import type { NodeApi, SyncHandlers } from '../../src/agent/manager/index.js';
import { signerFromPrivateKey } from '../../src/server/ca/index.js';
import { TrustBundle, jwtBundleJson, mintJwtSvid } from '../../src/spiffe/index.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { makeCa, signCsr, signCsrValidity, type TestCa } from './pki.js';

export const TD = 'example.org';

export function entry(id: string, path: string, selectors: string[], extra: Partial<WireEntry> = {}): WireEntry {
  return {
    id,
    spiffe_id: `spiffe://${TD}${path}`,
    parent_id: `spiffe://${TD}/keel/agent/tpm/${'a'.repeat(64)}`,
    selectors,
    x509_svid_ttl: 0,
    jwt_svid_ttl: 0,
    dns_names: [],
    federates_with: [],
    hint: '',
    revision: 1,
    ...extra,
  };
}

export class FakeNode implements NodeApi {
  readonly ca: TestCa = makeCa(TD);
  readonly jwtSigner = signerFromPrivateKey(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, 'ES256');
  entries: WireEntry[] = [];
  revision = 1;
  down = false;
  jwtTtlMs = 300_000;
  /** X.509-SVID life from the (possibly fake) clock's now; undefined: one day from the real clock (openssl -days 1). */
  x509TtlMs: number | undefined;
  /**
   * A server-side fault of SignX509Svids (e.g. the HSM's PIN changed):
   * 'error' answers UNAVAILABLE at once; 'hang' answers nothing and fails
   * after 30 s, as the agent's gRPC deadline would end the call.
   */
  x509Fault: 'error' | 'hang' | undefined;
  /** SignX509Svids calls made (failed ones included). */
  x509Calls = 0;
  /** Entry IDs the server refuses to sign (error `not-authorized`). */
  readonly refuse = new Set<string>();
  readonly signBatches: string[][] = [];
  jwtMints = 0;
  syncOpens = 0;
  #subs = new Set<SyncHandlers>();

  get x509BundleDer(): Buffer {
    return this.ca.certDer;
  }

  snapshot(): WireSyncEntries {
    const jwt = TrustBundle.create({ trustDomain: TD, jwtAuthorities: [[this.jwtSigner.keyId, this.jwtSigner.publicKey]] });
    return {
      entries: this.entries,
      x509_bundles: { [`spiffe://${TD}`]: this.ca.certDer },
      jwt_bundles: { [`spiffe://${TD}`]: Buffer.from(jwtBundleJson(jwt)) },
      revision: this.revision,
    };
  }

  /** Sends the current state down every open sync stream. */
  push(): void {
    this.revision++;
    for (const s of this.#subs) s.onUpdate(this.snapshot());
  }

  /** The server goes away: open streams end with a transport error. */
  goDown(): void {
    this.down = true;
    for (const s of [...this.#subs]) {
      this.#subs.delete(s);
      s.onEnd(new NodeApiError('transport', grpc.status.UNAVAILABLE, 'connection refused'));
    }
  }

  get openStreams(): number {
    return this.#subs.size;
  }

  syncEntries(handlers: SyncHandlers): () => void {
    this.syncOpens++;
    if (this.down) {
      queueMicrotask(() => handlers.onEnd(new NodeApiError('transport', grpc.status.UNAVAILABLE, 'connection refused')));
      return () => undefined;
    }
    this.#subs.add(handlers);
    queueMicrotask(() => this.#subs.has(handlers) && handlers.onUpdate(this.snapshot()));
    return () => void this.#subs.delete(handlers);
  }

  async signX509Svids(requests: readonly { entryId: string; csr: Buffer }[]): Promise<WireX509SvidResult[]> {
    this.x509Calls++;
    if (this.down) throw new NodeApiError('transport', grpc.status.UNAVAILABLE, 'connection refused');
    if (this.x509Fault === 'error') throw new NodeApiError('ca-unavailable', grpc.status.UNAVAILABLE, 'the CA cannot sign: HSM login failed');
    if (this.x509Fault === 'hang') {
      await new Promise((r) => setTimeout(r, 30_000));
      throw new NodeApiError('transport', grpc.status.DEADLINE_EXCEEDED, 'deadline exceeded');
    }
    this.signBatches.push(requests.map((r) => r.entryId));
    return requests.map((r) => {
      const e = this.entries.find((x) => x.id === r.entryId);
      if (!e || this.refuse.has(r.entryId)) return { entry_id: r.entryId, cert_chain: [], expires_at: 0, error: 'not-authorized' };
      const now = Math.floor(Date.now() / 1000) * 1000;
      const leaf = this.x509TtlMs === undefined ? signCsr(this.ca, r.csr, e.spiffe_id) : signCsrValidity(this.ca, r.csr, e.spiffe_id, new Date(now), new Date(now + this.x509TtlMs));
      return { entry_id: r.entryId, cert_chain: [leaf], expires_at: Math.floor(new Date(new X509Certificate(leaf).validTo).getTime() / 1000), error: '' };
    });
  }

  /** SignJwtSvid calls made (failed ones included). */
  jwtCalls = 0;

  async signJwtSvid(entryId: string, audience: readonly string[]): Promise<{ token: string; expiresAt: Date }> {
    this.jwtCalls++;
    if (this.down) throw new NodeApiError('transport', grpc.status.UNAVAILABLE, 'connection refused');
    const e = this.entries.find((x) => x.id === entryId);
    if (!e) throw new NodeApiError('not-authorized', grpc.status.PERMISSION_DENIED, 'no such entry');
    const expiresAt = new Date(Math.floor((Date.now() + this.jwtTtlMs) / 1000) * 1000);
    this.jwtMints++;
    return { token: await mintJwtSvid({ signer: this.jwtSigner, sub: SpiffeId.parse(e.spiffe_id), aud: audience, expiresAt }), expiresAt };
  }

  witMints = 0;

  /** A stand-in token (the manager caches it; its format is the CA's business, tested with the real CA). */
  async signWitSvid(entryId: string, publicKeyJwk: string): Promise<{ token: string; expiresAt: Date }> {
    if (this.down) throw new NodeApiError('transport', grpc.status.UNAVAILABLE, 'connection refused');
    if (!this.entries.some((x) => x.id === entryId)) throw new NodeApiError('not-authorized', grpc.status.PERMISSION_DENIED, 'no such entry');
    this.witMints++;
    return { token: `wit-${this.witMints}-${JSON.parse(publicKeyJwk).x as string}`, expiresAt: new Date(Math.floor((Date.now() + this.jwtTtlMs) / 1000) * 1000) };
  }
}
