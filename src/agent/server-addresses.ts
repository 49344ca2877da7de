/**
 * The servers an agent may talk to (agent.server.address as a list): all
 * share one store, so the agent SVID, the entries and the bundle are the same
 * through each. One is current; a transport failure moves to the next, so a
 * dead server costs one failed call, not a re-attestation.
 */
export class ServerAddresses {
  readonly #all: readonly string[];
  #index = 0;

  constructor(addresses: readonly string[]) {
    if (addresses.length === 0) throw new RangeError('at least one server address is needed');
    this.#all = [...addresses];
  }

  get current(): string {
    return this.#all[this.#index]!;
  }

  get count(): number {
    return this.#all.length;
  }

  /**
   * After a transport failure through `failed`: the next address (the same
   * one when there is only one). A failure reported for an address that is no
   * longer current (a late error of an old channel) moves nothing.
   */
  failedOver(failed: string): { from: string; to: string } | undefined {
    if (this.#all.length < 2 || failed !== this.current) return undefined;
    this.#index = (this.#index + 1) % this.#all.length;
    return { from: failed, to: this.current };
  }
}

/** `host:port`, with brackets around an IPv6 literal. */
export function formatHostPort(a: { readonly host: string; readonly port: number }): string {
  return `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
