/**
 * Key custody in a PKCS#11 token: keys generated inside it (sensitive,
 * non-extractable, sign-only), found again by label/id, and used to sign
 * asynchronously on the libuv pool through a pool of logged-in sessions.
 */
import { randomBytes, type KeyObject } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { resolveHsmConfig, type HsmAlgorithm, type HsmConfig, type HsmKeyType } from './config.js';
import {
  HsmAlgorithmError,
  HsmKeyExistsError,
  HsmKeyNotFoundError,
  HsmNotLoggedInError,
  HsmSessionError,
  HsmTokenNotPresentError,
  HsmUnsupportedKeyError,
  Pkcs11Error,
  toPkcs11Error,
} from './errors.js';
import { RSA_BITS, curveByParams, curveOf, ecPublicKey, rsaPublicKey } from './key-material.js';
import { Pkcs11Module } from './module.js';
import { pinHolder, readPin } from './pin.js';
import { SessionPool, type PooledSession } from './session-pool.js';
import { HsmSigner, signingPlan } from './signer.js';

export interface HsmKey {
  readonly label: string;
  readonly id: Buffer;
  readonly type: HsmKeyType;
  readonly publicKey: KeyObject;
}

interface CachedHandle {
  handle: Buffer;
  keyEpoch: number;
}

const MAX_LABEL_BYTES = 255;
/** CK_STATE values of a logged-in user session (pkcs11js exports no CKS_* names). */
const CKS_RO_USER_FUNCTIONS = 1;
const CKS_RW_USER_FUNCTIONS = 3;

function assertLabel(label: unknown): asserts label is string {
  if (typeof label !== 'string' || label === '' || Buffer.byteLength(label) > MAX_LABEL_BYTES) {
    throw new TypeError(`key label must be a non-empty string of at most ${MAX_LABEL_BYTES} bytes`);
  }
}

function assertId(id: unknown): asserts id is Buffer {
  if (!Buffer.isBuffer(id) || id.length === 0 || id.length > 64) throw new TypeError('key id must be a Buffer of 1..64 bytes');
}

export class Hsm {
  /** Private key handles by hex id; valid while their keyEpoch equals the pool's. */
  private readonly handles = new Map<string, CachedHandle>();
  /** Serialises key creation so that the label/id uniqueness check holds. */
  private generating: Promise<unknown> = Promise.resolve();

  private constructor(private readonly pool: SessionPool) {}

  /**
   * Loads and initialises the module (once per process), finds the token by
   * label or serial, opens `sessions` sessions and logs in with the PIN from
   * its source. Nothing stays open if any step fails.
   */
  static async open(config: HsmConfig): Promise<Hsm> {
    const cfg = resolveHsmConfig(config);
    const pin = await readPin(cfg.pin);
    const module = Pkcs11Module.acquire(cfg.module);
    // The PIN lives only in the holder's closures: not a property, not in any message.
    const pool = new SessionPool(module, cfg, pinHolder(cfg.pin, pin));
    try {
      pool.connect();
    } catch (e) {
      module.release();
      throw e;
    }
    return new Hsm(pool);
  }

  /** Handles of this Hsm's idle sessions (for leak checks in tests). */
  sessionHandles(): Buffer[] {
    return this.pool.sessionHandles();
  }

  /**
   * Runs `op` on a pooled session. A session fault, a logout or a stale key
   * handle is repaired (new session, login, handles re-found) and the
   * operation retried once; a lost token is reconnected on the next call.
   */
  private async run<T>(op: (s: PooledSession) => T | Promise<T>, name: string): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const s = await this.pool.acquire();
      try {
        const r = await op(s);
        this.pool.release(s);
        return r;
      } catch (e) {
        const err = e instanceof Error && !(e instanceof Pkcs11Error) && 'code' in e && typeof e.code === 'number' ? toPkcs11Error(e, name) : e;
        const sessionGone = err instanceof HsmSessionError || err instanceof HsmTokenNotPresentError;
        this.pool.release(s, sessionGone);
        if (err instanceof HsmTokenNotPresentError) this.pool.markTokenLost(err);
        const repairable = err instanceof HsmSessionError || err instanceof HsmNotLoggedInError || err instanceof HsmKeyNotFoundError;
        if (attempt === 0 && repairable) {
          await this.repair();
          continue;
        }
        if (attempt === 0 && err instanceof HsmTokenNotPresentError) continue; // one reconnect attempt
        if (err instanceof HsmKeyNotFoundError && !this.pool.tokenAlive()) {
          const lost = new HsmTokenNotPresentError('CKR_TOKEN_NOT_PRESENT', name, 'the token no longer answers (removed or unreadable)', { cause: err });
          this.pool.markTokenLost(lost);
          throw lost;
        }
        throw err;
      }
    }
  }

  /** After a logout or closed sessions, object handles are void and the login may be gone. */
  private async repair(): Promise<void> {
    this.pool.keyEpoch++;
    const s = await this.pool.acquire();
    try {
      this.pool.ensureLogin(s.handle);
      this.pool.release(s);
    } catch (e) {
      const err = toPkcs11Error(e, 'C_Login');
      this.pool.release(s, err instanceof HsmSessionError || err instanceof HsmTokenNotPresentError);
      if (err instanceof HsmSessionError) return; // the retry gets a fresh session and logs in there
      if (err instanceof HsmTokenNotPresentError) this.pool.markTokenLost(err);
      throw err;
    }
  }

  private find(s: PooledSession, template: pkcs11js.Template): Buffer[] {
    const api = this.pool.api;
    try {
      api.C_FindObjectsInit(s.handle, template);
    } catch (e) {
      throw toPkcs11Error(e, 'C_FindObjectsInit');
    }
    const out: Buffer[] = [];
    try {
      for (;;) {
        const batch = api.C_FindObjects(s.handle, 64);
        out.push(...batch);
        if (batch.length < 64) break;
      }
    } catch (e) {
      throw toPkcs11Error(e, 'C_FindObjects');
    } finally {
      try {
        api.C_FindObjectsFinal(s.handle);
      } catch {
        /* the search ends with the session anyway */
      }
    }
    return out;
  }

  private attrs(s: PooledSession, h: Buffer, types: number[]): Buffer[] {
    try {
      return this.pool.api.C_GetAttributeValue(s.handle, h, types.map((type) => ({ type }))).map((a) => a.value);
    } catch (e) {
      throw toPkcs11Error(e, 'C_GetAttributeValue');
    }
  }

  private describe(s: PooledSession, priv: Buffer): HsmKey | undefined {
    const [label, id, keyType] = this.attrs(s, priv, [pkcs11js.CKA_LABEL, pkcs11js.CKA_ID, pkcs11js.CKA_KEY_TYPE]);
    if (!label || !id || !keyType || id.length === 0) return undefined;
    const pubs = this.find(s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
      { type: pkcs11js.CKA_ID, value: id },
    ]);
    const kt = keyType.readUIntLE(0, Math.min(keyType.length, 6));
    let type: HsmKeyType;
    let publicKey: KeyObject;
    if (kt === pkcs11js.CKK_EC) {
      const pub = pubs[0];
      if (!pub) return undefined;
      const [params, point] = this.attrs(s, pub, [pkcs11js.CKA_EC_PARAMS, pkcs11js.CKA_EC_POINT]);
      const curve = params && curveByParams(params);
      if (!curve || !point) return undefined;
      type = curve.type;
      publicKey = ecPublicKey(curve, point);
    } else if (kt === pkcs11js.CKK_RSA) {
      const [n, e] = this.attrs(s, pubs[0] ?? priv, [pkcs11js.CKA_MODULUS, pkcs11js.CKA_PUBLIC_EXPONENT]);
      if (!n || !e) return undefined;
      publicKey = rsaPublicKey(n, e);
      const bits = publicKey.asymmetricKeyDetails?.modulusLength;
      if (bits === 2048) type = 'rsa-2048';
      else if (bits === 3072) type = 'rsa-3072';
      else return undefined;
    } else return undefined;
    return Object.freeze({ label: label.toString('utf8'), id: Buffer.from(id), type, publicKey });
  }

  /**
   * Generates a key pair inside the token: token objects, private half
   * private + sensitive + non-extractable + sign-only. A label or id already
   * in use is refused (HsmKeyExistsError); on any failure both halves are destroyed.
   */
  generateKey(opts: { label: string; id?: Buffer; type: HsmKeyType }): Promise<HsmKey> {
    assertLabel(opts.label);
    const id = opts.id === undefined ? randomBytes(16) : Buffer.from(opts.id);
    assertId(id);
    const curve = curveOf(opts.type);
    if (!curve && !(opts.type in RSA_BITS)) throw new TypeError(`unknown key type ${String(opts.type)}`);
    const job = this.generating.then(
      () => this.generateNow(opts.label, id, opts.type),
      () => this.generateNow(opts.label, id, opts.type),
    );
    this.generating = job.catch(() => undefined);
    return job;
  }

  private async generateNow(label: string, id: Buffer, type: HsmKeyType): Promise<HsmKey> {
    const C = pkcs11js;
    const curve = curveOf(type);
    const common = (cls: number): pkcs11js.Template => [
      { type: C.CKA_CLASS, value: cls },
      { type: C.CKA_KEY_TYPE, value: curve ? C.CKK_EC : C.CKK_RSA },
      { type: C.CKA_TOKEN, value: true },
      { type: C.CKA_LABEL, value: label },
      { type: C.CKA_ID, value: id },
    ];
    const pubTpl: pkcs11js.Template = [
      ...common(C.CKO_PUBLIC_KEY),
      { type: C.CKA_PRIVATE, value: false },
      { type: C.CKA_VERIFY, value: true },
      { type: C.CKA_ENCRYPT, value: false },
      { type: C.CKA_WRAP, value: false },
      ...(curve
        ? [{ type: C.CKA_EC_PARAMS, value: curve.params }]
        : [
            { type: C.CKA_MODULUS_BITS, value: RSA_BITS[type as 'rsa-2048' | 'rsa-3072'] },
            { type: C.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
          ]),
    ];
    const privTpl: pkcs11js.Template = [
      ...common(C.CKO_PRIVATE_KEY),
      { type: C.CKA_PRIVATE, value: true },
      { type: C.CKA_SENSITIVE, value: true },
      { type: C.CKA_EXTRACTABLE, value: false },
      { type: C.CKA_SIGN, value: true },
      { type: C.CKA_DECRYPT, value: false },
      { type: C.CKA_UNWRAP, value: false },
      { type: C.CKA_DERIVE, value: false },
    ];
    const mechanism = { mechanism: curve ? C.CKM_EC_KEY_PAIR_GEN : C.CKM_RSA_PKCS_KEY_PAIR_GEN };
    return this.run(async (s) => {
      const clash =
        this.find(s, [{ type: C.CKA_LABEL, value: label }]).length > 0 || this.find(s, [{ type: C.CKA_ID, value: id }]).length > 0;
      if (clash) throw new HsmKeyExistsError(`a key with label "${label}" or id ${id.toString('hex')} already exists on the token`);
      let pair: pkcs11js.KeyPair;
      try {
        // Async: RSA-3072 generation takes seconds and must not hold the event loop.
        pair = await this.pool.api.C_GenerateKeyPairAsync(s.handle, mechanism, pubTpl, privTpl);
      } catch (e) {
        throw toPkcs11Error(e, 'C_GenerateKeyPair');
      }
      try {
        const key = this.describe(s, pair.privateKey);
        if (!key) throw new HsmUnsupportedKeyError('the generated key could not be read back from the token');
        this.handles.set(id.toString('hex'), { handle: pair.privateKey, keyEpoch: this.pool.keyEpoch });
        return key;
      } catch (e) {
        for (const h of [pair.privateKey, pair.publicKey]) {
          try {
            this.pool.api.C_DestroyObject(s.handle, h);
          } catch {
            /* best effort: the error below is what matters */
          }
        }
        throw e;
      }
    }, 'C_GenerateKeyPair');
  }

  /** The key with this label and/or id, or undefined. Several matches → HsmUnsupportedKeyError (ambiguous). */
  async findKey(opts: { label?: string; id?: Buffer }): Promise<HsmKey | undefined> {
    if (opts.label === undefined && opts.id === undefined) throw new TypeError('findKey needs a label or an id');
    if (opts.label !== undefined) assertLabel(opts.label);
    if (opts.id !== undefined) assertId(opts.id);
    const tpl: pkcs11js.Template = [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }];
    if (opts.label !== undefined) tpl.push({ type: pkcs11js.CKA_LABEL, value: opts.label });
    if (opts.id !== undefined) tpl.push({ type: pkcs11js.CKA_ID, value: opts.id });
    return this.run((s) => {
      const found = this.find(s, tpl);
      if (found.length > 1) throw new HsmUnsupportedKeyError(`${found.length} private keys match; give both label and id`);
      const h = found[0];
      if (!h) return undefined;
      const key = this.describe(s, h);
      if (!key) throw new HsmUnsupportedKeyError('the matching key is not an EC P-256/P-384 or RSA-2048/3072 key pair keel can use');
      this.handles.set(key.id.toString('hex'), { handle: h, keyEpoch: this.pool.keyEpoch });
      return key;
    }, 'C_FindObjects');
  }

  /** Every usable signing key on the token (other objects are skipped), optionally by label prefix. */
  async listKeys(opts: { labelPrefix?: string } = {}): Promise<HsmKey[]> {
    return this.run((s) => {
      const keys: HsmKey[] = [];
      for (const h of this.find(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }])) {
        const k = this.describe(s, h);
        if (k && (opts.labelPrefix === undefined || k.label.startsWith(opts.labelPrefix))) keys.push(k);
      }
      return keys.sort((a, b) => a.label.localeCompare(b.label));
    }, 'C_FindObjects');
  }

  /** Destroys both halves of the key. A key that is already gone is not an error. */
  async destroyKey(key: HsmKey): Promise<void> {
    await this.run((s) => {
      for (const h of this.find(s, [{ type: pkcs11js.CKA_ID, value: key.id }])) {
        try {
          this.pool.api.C_DestroyObject(s.handle, h);
        } catch (e) {
          throw toPkcs11Error(e, 'C_DestroyObject');
        }
      }
    }, 'C_DestroyObject');
    this.handles.delete(key.id.toString('hex'));
  }

  /** The private key handle for `id`, cached until something invalidates object handles. */
  private privateHandle(s: PooledSession, id: Buffer, idHex: string): Buffer {
    const c = this.handles.get(idHex);
    if (c && c.keyEpoch === this.pool.keyEpoch) return c.handle;
    const found = this.find(s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
      { type: pkcs11js.CKA_ID, value: id },
    ]);
    const h = found[0];
    if (!h) throw new HsmKeyNotFoundError('NOT_FOUND', 'C_FindObjects', `no private key with id ${idHex} on the token`);
    this.handles.set(idHex, { handle: h, keyEpoch: this.pool.keyEpoch });
    return h;
  }

  /**
   * Signs `input` (already hashed / DigestInfo-wrapped as the mechanism
   * wants) with C_SignInit + asynchronous C_Sign on the libuv pool.
   * @internal used by HsmSigner
   */
  signRaw(id: Buffer, idHex: string, mechanism: pkcs11js.Mechanism, input: Buffer, outLength: number): Promise<Buffer> {
    return this.run((s) => {
      const api = this.pool.api;
      const key = this.privateHandle(s, id, idHex);
      try {
        api.C_SignInit(s.handle, mechanism, key);
      } catch (e) {
        throw toPkcs11Error(e, 'C_SignInit');
      }
      return new Promise<Buffer>((resolve, reject) => {
        const out = Buffer.allocUnsafe(outLength);
        // pkcs11js does not pin async buffers (#121): the closure keeps `input` and `out` alive until the callback.
        const pinned = [input, out];
        try {
          api.C_Sign(s.handle, input, out, (err, sig) => {
            pinned.length = 0;
            if (err) reject(toPkcs11Error(err, 'C_Sign'));
            else resolve(sig);
          });
        } catch (e) {
          // The operation started by C_SignInit is still active on this session: make it unusable.
          reject(new HsmSessionError('CKR_OPERATION_ACTIVE', 'C_Sign', e instanceof Error ? e.message : undefined));
        }
      });
    }, 'C_Sign');
  }

  /**
   * Whether these keys can sign now: the token answers, the application is
   * logged in (a lost login is repaired, which re-reads a rejected PIN's
   * source), and each key is still on the token. Signs nothing.
   */
  async canSign(keys: readonly HsmKey[]): Promise<boolean> {
    try {
      await this.run((s) => {
        let state: number;
        try {
          state = this.pool.api.C_GetSessionInfo(s.handle).state;
        } catch (e) {
          throw toPkcs11Error(e, 'C_GetSessionInfo');
        }
        if (state !== CKS_RO_USER_FUNCTIONS && state !== CKS_RW_USER_FUNCTIONS) {
          throw new HsmNotLoggedInError('CKR_USER_NOT_LOGGED_IN', 'C_GetSessionInfo', 'the session is not logged in');
        }
        for (const k of keys) {
          const idHex = k.id.toString('hex');
          // A cached handle may name a key destroyed since: reading an attribute proves it is there.
          this.attrs(s, this.privateHandle(s, k.id, idHex), [pkcs11js.CKA_ID]);
        }
      }, 'C_GetSessionInfo');
      return true;
    } catch {
      return false;
    }
  }

  /** Why logins are refused now (the token rejected the PIN), or undefined. Never contains the PIN. */
  get loginRefusal(): Error | undefined {
    return this.pool.loginRefusal;
  }

  /** @internal the token's mechanism list, for HsmSigner's choice of mechanism */
  hasMechanism(m: number): boolean {
    return this.pool.mechanisms.has(m);
  }

  /**
   * A signer over `key`, structurally the `Signer` of src/spiffe/signer.ts.
   * Default algorithm: ES256 / ES384 by curve, RS256 for RSA.
   */
  signer(key: HsmKey, algorithm?: HsmAlgorithm): HsmSigner {
    const alg = algorithm ?? (key.type === 'ec-p256' ? 'ES256' : key.type === 'ec-p384' ? 'ES384' : 'RS256');
    const plan = signingPlan(key, alg, (m) => this.hasMechanism(m));
    if (!plan) throw new HsmAlgorithmError(`the token has no mechanism for ${alg}`);
    return new HsmSigner(this, key, alg, plan);
  }

  /** Waits for operations in flight, logs out, closes every session, finalises the module if this was its last user. */
  async close(): Promise<void> {
    const wasOpen = !this.closedFlag;
    this.closedFlag = true;
    if (!wasOpen) return;
    await this.pool.close();
    this.handles.clear();
    this.pool.module.release();
  }
  private closedFlag = false;
}
