/**
 * A pool of logged-in read/write sessions on one token. One operation in
 * flight per session; callers beyond the pool size wait in a bounded FIFO.
 * The pool also owns the connection state: the slot, the login (PIN held
 * only in the `login` closure given by Hsm.open), and reconnecting to a
 * token that was lost (module re-initialisation when the token itself is gone).
 */
import pkcs11js from 'pkcs11js';
import type { ResolvedHsmConfig } from './config.js';
import {
  HsmBusyError,
  HsmClosedError,
  HsmConfigError,
  HsmPinIncorrectError,
  HsmPinLockedError,
  HsmTokenNotPresentError,
  type Pkcs11Error,
  toPkcs11Error,
} from './errors.js';
import type { Pkcs11Module } from './module.js';
import type { PinHolder } from './pin.js';

export interface PooledSession {
  readonly handle: Buffer;
  /** Pool epoch the session belongs to; older ones are discarded on release. */
  readonly epoch: number;
  /** Module generation it was opened in; after a re-initialisation its handle number may be reused, so never close it then. */
  readonly moduleGeneration: number;
}

interface Waiter {
  resolve(s: PooledSession): void;
  reject(e: unknown): void;
}

/** Longest wait between re-reads of the PIN source after a rejection. */
const MAX_PIN_RETRY_MS = 60_000;

function tokenDescription(t: ResolvedHsmConfig['token']): string {
  return 'label' in t ? `labelled "${t.label}"` : `with serial "${t.serial}"`;
}

export class SessionPool {
  readonly api: pkcs11js.PKCS11;
  /** Bumped whenever object handles may have become invalid (logout, reconnect): key handle caches compare against it. */
  keyEpoch = 0;
  mechanisms = new Set<number>();
  private slot: Buffer | undefined;
  private epoch = 0;
  private moduleGeneration: number;
  private idle: PooledSession[] = [];
  /** Sessions of the current epoch that are open (idle or checked out). */
  private open = 0;
  /** Sessions checked out, any epoch. */
  private busy = 0;
  private waiters: Waiter[] = [];
  private waiterHead = 0;
  private closed = false;
  private tokenLost: Pkcs11Error | undefined;
  private reconnecting: Promise<void> | undefined;
  private lastReconnectFailure: { at: number; error: unknown } | undefined;
  private pinRejected: Pkcs11Error | undefined;
  /** After a rejection: no re-read of the PIN source before this time; the wait doubles up to a minute. */
  private nextPinAttemptAt = 0;
  private pinRetryMs: number;
  private idleWaiters: Array<() => void> = [];

  constructor(
    readonly module: Pkcs11Module,
    readonly config: ResolvedHsmConfig,
    private readonly pin: PinHolder,
  ) {
    this.api = module.api;
    this.moduleGeneration = module.generation;
    this.pinRetryMs = config.pinRetryIntervalMs;
  }

  /** Finds the token, opens the sessions and logs in; throws (leaving nothing open) if any of it fails. */
  connect(): void {
    this.slot = this.findSlot();
    this.mechanisms = new Set(this.api.C_GetMechanismList(this.slot));
    try {
      for (let i = 0; i < this.config.sessions; i++) this.idle.push(this.openSession());
    } catch (e) {
      this.closeIdle();
      throw e;
    }
  }

  get waiting(): number {
    return this.waiters.length - this.waiterHead;
  }

  /** Handles of the sessions currently open in this pool (diagnostics and leak tests). */
  sessionHandles(): Buffer[] {
    return this.idle.map((s) => s.handle);
  }

  private findSlot(): Buffer {
    let slots: Buffer[];
    try {
      slots = this.api.C_GetSlotList(true);
    } catch (e) {
      throw toPkcs11Error(e, 'C_GetSlotList');
    }
    const want = this.config.token;
    const found: Buffer[] = [];
    for (const slot of slots) {
      let info: pkcs11js.TokenInfo;
      try {
        info = this.api.C_GetTokenInfo(slot);
      } catch {
        continue; // a token that cannot describe itself is not ours to use
      }
      if (!(info.flags & pkcs11js.CKF_TOKEN_INITIALIZED)) continue;
      const match = 'label' in want ? info.label.trimEnd() === want.label : info.serialNumber.trim() === want.serial;
      if (match) found.push(slot);
    }
    if (found.length > 1) throw new HsmConfigError('token', `${found.length} tokens are ${tokenDescription(want)}; select by serial`);
    const slot = found[0];
    if (!slot) throw new HsmTokenNotPresentError('CKR_TOKEN_NOT_PRESENT', 'C_GetSlotList', `no token ${tokenDescription(want)}`);
    return slot;
  }

  /** True if the slot still answers for the configured token. */
  tokenAlive(): boolean {
    if (!this.slot || this.module.generation !== this.moduleGeneration) return false;
    try {
      const info = this.api.C_GetTokenInfo(this.slot);
      const want = this.config.token;
      return 'label' in want ? info.label.trimEnd() === want.label : info.serialNumber.trim() === want.serial;
    } catch {
      return false;
    }
  }

  /** Why logins fail now (the token refused the PIN), or undefined. */
  get loginRefusal(): Pkcs11Error | undefined {
    return this.pinRejected;
  }

  /**
   * Logs the application in through `session`; already logged in is fine. A
   * rejected PIN is never offered again (so as not to lock the token): after
   * a rejection the PIN source is re-read at once, then at most once per
   * retry interval (doubling up to a minute), and only a different PIN is tried.
   */
  ensureLogin(session: Buffer): void {
    if (this.pinRejected) {
      const now = Date.now();
      if (now < this.nextPinAttemptAt) throw this.pinRejected;
      this.nextPinAttemptAt = now + this.pinRetryMs;
      this.pinRetryMs = Math.min(Math.max(this.pinRetryMs * 2, this.config.pinRetryIntervalMs), MAX_PIN_RETRY_MS);
      // A PIN source that cannot be read leaves the rejection as the reason: it is what an operator must fix.
      let changed = false;
      try {
        changed = this.pin.reload();
      } catch {
        changed = false;
      }
      if (!changed) throw this.pinRejected;
    }
    try {
      this.pin.withPin((pin) => this.api.C_Login(session, pkcs11js.CKU_USER, pin));
    } catch (e) {
      const err = toPkcs11Error(e, 'C_Login', `user login to token ${tokenDescription(this.config.token)}`);
      if (err.code === 'CKR_USER_ALREADY_LOGGED_IN') return this.loginSucceeded();
      if (err instanceof HsmPinIncorrectError || err instanceof HsmPinLockedError) {
        const first = !this.pinRejected;
        err.message += ' (keel will not offer this PIN again; it re-reads the PIN source and tries a new PIN when one is there)';
        this.pinRejected = err;
        this.pin.markRejected();
        // The operator may already have written the new PIN: look once, right away.
        if (first) {
          this.nextPinAttemptAt = 0;
          this.pinRetryMs = this.config.pinRetryIntervalMs;
          return this.ensureLogin(session);
        }
      }
      throw err;
    }
    this.loginSucceeded();
  }

  private loginSucceeded(): void {
    this.pinRejected = undefined;
    this.nextPinAttemptAt = 0;
    this.pinRetryMs = this.config.pinRetryIntervalMs;
  }

  private openSession(): PooledSession {
    const slot = this.slot;
    if (!slot) throw new HsmTokenNotPresentError('CKR_TOKEN_NOT_PRESENT', 'C_OpenSession', 'not connected');
    let handle: Buffer;
    try {
      handle = this.api.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    } catch (e) {
      throw toPkcs11Error(e, 'C_OpenSession');
    }
    try {
      this.ensureLogin(handle);
    } catch (e) {
      this.closeHandle(handle);
      throw e;
    }
    this.open++;
    return { handle, epoch: this.epoch, moduleGeneration: this.module.generation };
  }

  private closeHandle(handle: Buffer): void {
    try {
      this.api.C_CloseSession(handle);
    } catch {
      /* already closed (C_CloseAllSessions, token gone): nothing to free */
    }
  }

  private closeIdle(): void {
    for (const s of this.idle) if (s.moduleGeneration === this.module.generation) this.closeHandle(s.handle);
    this.open -= this.idle.length;
    this.idle = [];
  }

  private get healthy(): boolean {
    return !this.tokenLost && !this.reconnecting && !this.module.pendingReset && this.module.generation === this.moduleGeneration;
  }

  /** A session for one operation; give it back with release(). */
  acquire(): Promise<PooledSession> {
    if (this.closed) return Promise.reject(new HsmClosedError());
    if (!this.healthy) return this.acquireAfterRecovery();
    const s = this.idle.pop();
    if (s) {
      this.checkout();
      return Promise.resolve(s);
    }
    if (this.open < this.config.sessions) {
      try {
        const fresh = this.openSession();
        this.checkout();
        return Promise.resolve(fresh);
      } catch (e) {
        return Promise.reject(e);
      }
    }
    if (this.waiting >= this.config.maxQueue) return Promise.reject(new HsmBusyError(this.waiting));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private checkout(): void {
    this.busy++;
    this.module.enter();
  }

  private async acquireAfterRecovery(): Promise<PooledSession> {
    await this.module.pendingReset;
    if (this.module.generation !== this.moduleGeneration && !this.tokenLost) {
      // Someone else re-initialised the module: our sessions and handles are void.
      this.tokenLost = new HsmTokenNotPresentError('CKR_SESSION_HANDLE_INVALID', 'C_Initialize', 'module was re-initialised');
    }
    if (this.tokenLost || this.reconnecting) await this.reconnect();
    return this.acquire();
  }

  /**
   * Returns a session. `drop` closes it (it failed in a way that makes it
   * useless); a lazily opened replacement takes its place.
   */
  release(s: PooledSession, drop = false): void {
    this.busy--;
    this.module.leave();
    if (s.epoch !== this.epoch) {
      if (s.moduleGeneration === this.module.generation) this.closeHandle(s.handle);
    } else if (drop) {
      this.closeHandle(s.handle);
      this.open--;
    } else {
      this.idle.push(s);
    }
    if (this.busy === 0 && this.idleWaiters.length > 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
    this.dispatch();
  }

  private nextWaiter(): Waiter | undefined {
    if (this.waiterHead >= this.waiters.length) return undefined;
    const w = this.waiters[this.waiterHead];
    this.waiters[this.waiterHead++] = undefined as unknown as Waiter;
    if (this.waiterHead > 1024 && this.waiterHead * 2 > this.waiters.length) {
      this.waiters = this.waiters.slice(this.waiterHead);
      this.waiterHead = 0;
    }
    return w;
  }

  private dispatch(): void {
    while (this.waiting > 0) {
      if (this.closed) {
        this.nextWaiter()?.reject(new HsmClosedError());
        continue;
      }
      if (!this.healthy) {
        // Let the first waiter drive recovery; the others queue behind it in acquire().
        const w = this.nextWaiter()!;
        this.acquireAfterRecovery().then(w.resolve, w.reject);
        continue;
      }
      const s = this.idle.pop();
      if (s) {
        this.checkout();
        this.nextWaiter()!.resolve(s);
        continue;
      }
      if (this.open >= this.config.sessions) return;
      const w = this.nextWaiter()!;
      try {
        const fresh = this.openSession();
        this.checkout();
        w.resolve(fresh);
      } catch (e) {
        w.reject(e);
      }
    }
  }

  /** The token is gone or unusable: the next acquire reconnects first. */
  markTokenLost(err: Pkcs11Error): void {
    this.tokenLost ??= err;
  }

  /**
   * Reconnects to a lost token: if the slot still answers, new sessions
   * suffice; otherwise the module is re-initialised (the only way SoftHSM and
   * many drivers rescan their tokens). Fails fast for reconnectIntervalMs after a failure.
   */
  reconnect(): Promise<void> {
    if (this.reconnecting) return this.reconnecting;
    const last = this.lastReconnectFailure;
    if (last && Date.now() - last.at < this.config.reconnectIntervalMs) return Promise.reject(last.error);
    this.reconnecting = (async () => {
      if (!this.tokenAlive()) await this.module.reinitialize(this.moduleGeneration);
      if (this.closed) throw new HsmClosedError();
      // Everything from before is void: new epoch, no idle sessions, handles re-found.
      if (this.module.generation === this.moduleGeneration) this.closeIdle();
      this.idle = [];
      this.open = 0;
      this.epoch++;
      this.keyEpoch++;
      this.moduleGeneration = this.module.generation;
      this.slot = this.findSlot();
      this.mechanisms = new Set(this.api.C_GetMechanismList(this.slot));
      this.idle.push(this.openSession());
      this.tokenLost = undefined;
      this.lastReconnectFailure = undefined;
    })()
      .catch((e: unknown) => {
        this.lastReconnectFailure = { at: Date.now(), error: e };
        throw e;
      })
      .finally(() => {
        this.reconnecting = undefined;
      });
    return this.reconnecting;
  }

  /** Stops the pool: queued callers get HsmClosedError, in-flight ones finish, then logout and close. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.dispatch();
    if (this.busy > 0) await new Promise<void>((r) => this.idleWaiters.push(r));
    await this.reconnecting?.catch(() => undefined);
    const current = this.module.generation === this.moduleGeneration;
    const first = this.idle[0];
    // C_Logout is per application: leave the login alone if another Hsm in this process shares the module.
    if (current && first && this.module.users === 1) {
      try {
        this.api.C_Logout(first.handle);
      } catch {
        /* not logged in any more (token lost, external logout) */
      }
    }
    this.closeIdle();
    this.open = 0;
  }
}
