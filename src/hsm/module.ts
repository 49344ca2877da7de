/**
 * One pkcs11js instance per module path per process. PKCS#11 is initialised
 * once per process (a second C_Initialize answers
 * CKR_CRYPTOKI_ALREADY_INITIALIZED), always with CKF_OS_LOCKING_OK: without it
 * SoftHSM turns its mutexes off and crashes under concurrent signing.
 *
 * A module can be re-initialised (C_Finalize + C_Initialize) to pick up a
 * token that was removed and came back; that only happens when no operation
 * of any user of the module is in flight, and bumps `generation` so every
 * user knows its sessions and handles are gone.
 */
import { realpathSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import { HsmConfigError, toPkcs11Error } from './errors.js';

const modules = new Map<string, Pkcs11Module>();

export class Pkcs11Module {
  readonly api: pkcs11js.PKCS11;
  /** Incremented by every re-initialisation: sessions and handles of older generations are void. */
  generation = 0;
  private refs = 0;
  private busy = 0;
  private drainWaiters: Array<() => void> = [];
  private resetting: Promise<void> | undefined;

  private constructor(readonly path: string) {
    this.api = new pkcs11js.PKCS11();
    try {
      this.api.load(path);
    } catch (e) {
      throw new HsmConfigError('module', `cannot load PKCS#11 module ${path}: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.initialize();
  }

  /** A reference to the module at `path`, loading and initialising it on first use. Pair with release(). */
  static acquire(path: string): Pkcs11Module {
    let real: string;
    try {
      real = realpathSync(path);
    } catch {
      throw new HsmConfigError('module', `PKCS#11 module ${path} does not exist`);
    }
    let m = modules.get(real);
    if (!m) {
      m = new Pkcs11Module(real);
      modules.set(real, m);
    }
    m.refs++;
    return m;
  }

  private initialize(): void {
    try {
      this.api.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      const err = toPkcs11Error(e, 'C_Initialize');
      if (err.code !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') throw err;
    }
  }

  /** Drops a reference; the last one finalises the module. */
  release(): void {
    if (this.refs <= 0) return;
    this.refs--;
    if (this.refs === 0) {
      modules.delete(this.path);
      try {
        this.api.C_Finalize();
      } catch {
        // Finalising a module whose token vanished can fail; nothing is left to clean.
      }
      try {
        this.api.close();
      } catch {
        /* already unloaded */
      }
    }
  }

  /** How many acquire() references are held. */
  get users(): number {
    return this.refs;
  }

  /** A re-initialisation in progress, to wait for before starting an operation. */
  get pendingReset(): Promise<void> | undefined {
    return this.resetting;
  }

  /** Marks an operation (a checked-out session) as in flight. */
  enter(): void {
    this.busy++;
  }

  leave(): void {
    this.busy--;
    if (this.busy === 0 && this.drainWaiters.length > 0) {
      const w = this.drainWaiters;
      this.drainWaiters = [];
      for (const f of w) f();
    }
  }

  /**
   * C_Finalize + C_Initialize once nothing is in flight, unless someone else
   * already did it since `seenGeneration`.
   */
  reinitialize(seenGeneration: number): Promise<void> {
    if (this.generation !== seenGeneration) return Promise.resolve();
    if (this.resetting) return this.resetting;
    this.resetting = (async () => {
      if (this.busy > 0) await new Promise<void>((r) => this.drainWaiters.push(r));
      try {
        this.api.C_Finalize();
      } catch {
        /* the module may already consider itself finalised */
      }
      this.generation++;
      this.initialize();
    })().finally(() => {
      this.resetting = undefined;
    });
    return this.resetting;
  }
}
