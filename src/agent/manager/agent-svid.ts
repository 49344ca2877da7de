/**
 * The agent's own SVID: renewed at half-life with a fresh quote. A refused
 * renewal (the node drifted out of policy, was evicted) is logged with the
 * server's reason; the agent keeps its current SVID, and with it every
 * workload SVID, until it expires, and keeps trying. The renew function
 * decides how: renewal while the SVID is valid, full attestation after.
 */
import type { Logger } from '../../log/index.js';
import { TpmDeviceError } from '../../tpm/tpm-error.js';
import { NodeApiError } from '../attestation/index.js';
import { Backoff, formatDelay, type BackoffOptions } from './backoff.js';
import { renewalTime } from './schedule.js';

const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The server's reason for a gRPC failure; `tpm` for a fault of the node's TPM
 * (it reopens its connection by itself); the error's name for anything else
 * (a bad answer).
 */
function failureOf(e: unknown): { reason: string; detail: string } {
  if (e instanceof TpmDeviceError) return { reason: 'tpm', detail: `${e.name}: ${e.message}` };
  if (e instanceof NodeApiError) return e;
  if (typeof (e as { code?: unknown })?.code === 'number' && (e as { metadata?: unknown }).metadata) return NodeApiError.from(e);
  const err = e as Error;
  return { reason: err?.name ?? 'Error', detail: err?.message ?? String(e) };
}

export interface AgentIdentity {
  readonly spiffeId: string;
  /** DER, leaf first. */
  readonly chain: readonly Buffer[];
  /** Signs with the key the leaf certifies (the TPM-resident agent key): DER ECDSA-SHA256. */
  sign(data: Buffer): Promise<Buffer>;
  readonly expiresAt: Date;
  /** The X.509 authorities the server returned with it (concatenated DER). */
  readonly bundle: Buffer;
}

export interface AgentSvidRotatorOptions {
  readonly initial: AgentIdentity;
  /** A new agent identity; rejects with NodeApiError (the server's reason) or another error. */
  readonly renew: (current: AgentIdentity) => Promise<AgentIdentity>;
  readonly onRenewed: (next: AgentIdentity) => void;
  readonly logger: Logger;
  readonly backoff?: BackoffOptions;
  readonly now?: () => number;
  readonly random?: () => number;
}

export class AgentSvidRotator {
  readonly #o: AgentSvidRotatorOptions;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #backoff: Backoff;
  #current: AgentIdentity;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  #running: Promise<void> | undefined;
  /** The reason of the last failed attempt, so a change of reason is logged once. */
  #lastFailure: string | undefined;

  constructor(o: AgentSvidRotatorOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#random = o.random ?? Math.random;
    this.#backoff = new Backoff(o.backoff);
    this.#current = o.initial;
  }

  get current(): AgentIdentity {
    return this.#current;
  }

  start(): void {
    this.#schedule(this.#renewAt(this.#current) - this.#now());
  }

  stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    return this.#running ?? Promise.resolve();
  }

  /** Renews now (e.g. after an operator asks); resolves when the attempt is over. */
  renewNow(): Promise<void> {
    clearTimeout(this.#timer);
    return this.#attempt();
  }

  #renewAt(id: AgentIdentity): number {
    // Half of the life left from now (when it arrived), not from notBefore: the
    // server backdates notBefore by its clock-skew tolerance, which can exceed half a short TTL.
    return renewalTime(this.#now(), id.expiresAt.getTime(), this.#random);
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#attempt(), Math.min(Math.max(0, delayMs), MAX_TIMER_MS));
  }

  #attempt(): Promise<void> {
    this.#running ??= this.#renew().finally(() => (this.#running = undefined));
    return this.#running;
  }

  async #renew(): Promise<void> {
    if (this.#stopped) return;
    const before = this.#current;
    try {
      const next = await this.#o.renew(before);
      if (this.#stopped) return;
      this.#current = next;
      this.#backoff.reset();
      this.#lastFailure = undefined;
      this.#o.logger.info('agent SVID renewed', { spiffeId: next.spiffeId, expiresAt: next.expiresAt });
      this.#o.onRenewed(next);
      this.#schedule(this.#renewAt(next) - this.#now());
    } catch (e) {
      if (this.#stopped) return;
      const err = failureOf(e);
      const delay = this.#backoff.next();
      const valid = before.expiresAt.getTime() > this.#now();
      const fields = { reason: err.reason, detail: err.detail, expiresAt: before.expiresAt, attempt: this.#backoff.attempts };
      if (err.reason === 'transport') {
        this.#o.logger.warn(`server unreachable, retrying agent SVID renewal in ${formatDelay(delay)}`, fields);
      } else if (err.reason === 'tpm') {
        // Every TPM failure is a warning: the TPM is expected back (the device reconnects by itself).
        this.#o.logger.warn(
          `the TPM failed during agent SVID ${valid ? 'renewal' : 'attestation'}, retrying in ${formatDelay(delay)}${valid ? '' : '; serving no identities'}`,
          fields,
        );
      } else if (this.#lastFailure !== err.reason) {
        this.#o.logger.error(
          valid
            ? `agent SVID renewal refused (${err.reason}); serving the current identities until ${before.expiresAt.toISOString()}`
            : `agent attestation refused (${err.reason}); serving no identities`,
          fields,
        );
      } else {
        this.#o.logger.debug(`agent SVID renewal refused again, retrying in ${formatDelay(delay)}`, fields);
      }
      this.#lastFailure = err.reason;
      this.#schedule(delay);
    }
  }
}
