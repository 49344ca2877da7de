/**
 * WIT-SVIDs on the agent: for each entry a fresh key pair per token (P-256,
 * ES256), the public half sent to the server in SignWitSvid, the private half
 * handed to the workload as a JWK (WITSVID.wit_svid_key). A token is reused
 * until half of its life has passed; concurrent requests for an entry share
 * one call; when the server cannot be reached a token that has not expired
 * is served rather than none.
 */
import { generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type { IssuedWitSvid } from '../workload/identity-source.js';
import { jwtIsFresh } from './schedule.js';

const generate = promisify(generateKeyPair);

export type SignWit = (entryId: string, publicKeyJwk: string) => Promise<{ token: string; expiresAt: Date }>;

interface Held {
  readonly wit: IssuedWitSvid;
  readonly receivedAt: number;
}

/** The key pair of one WIT-SVID: public JWK (with alg) for cnf, private JWK for the workload. */
export async function witKeyPair(): Promise<{ publicJwk: string; privateJwk: string }> {
  const { publicKey, privateKey } = (await generate('ec', { namedCurve: 'P-256' })) as { publicKey: KeyObject; privateKey: KeyObject };
  const pub = publicKey.export({ format: 'jwk' });
  const priv = privateKey.export({ format: 'jwk' });
  return { publicJwk: JSON.stringify({ ...pub, alg: 'ES256' }), privateJwk: JSON.stringify({ ...priv, alg: 'ES256' }) };
}

export class WitSvidCache {
  readonly #held = new Map<string, Held>();
  readonly #inFlight = new Map<string, Promise<IssuedWitSvid>>();

  constructor(readonly now: () => number) {}

  get size(): number {
    return this.#held.size;
  }

  async fetch(entryId: string, spiffeId: string, sign: SignWit): Promise<IssuedWitSvid> {
    const key = `${entryId}\u0000${spiffeId}`;
    const now = this.now();
    const held = this.#held.get(key);
    if (held && jwtIsFresh(held.receivedAt, held.wit.expiresAt.getTime(), now)) return held.wit;
    let flight = this.#inFlight.get(key);
    if (!flight) {
      flight = (async () => {
        const { publicJwk, privateJwk } = await witKeyPair();
        const r = await sign(entryId, publicJwk);
        const wit = { token: r.token, privateKeyJwk: privateJwk, expiresAt: r.expiresAt };
        this.#held.set(key, { wit, receivedAt: this.now() });
        return wit;
      })();
      const forget = (): void => void this.#inFlight.delete(key);
      flight.then(forget, forget);
      this.#inFlight.set(key, flight);
    }
    try {
      return await flight;
    } catch (e) {
      if (held && held.wit.expiresAt.getTime() > this.now()) return held.wit;
      throw e;
    }
  }

  /** Drops the tokens of entries no longer held. */
  retain(entryIds: ReadonlySet<string>): void {
    for (const k of this.#held.keys()) if (!entryIds.has(k.split('\u0000')[0]!)) this.#held.delete(k);
  }
}
