/**
 * The WIT-SVID profile of the Workload API (SPIFFE standards/WIT-SVID.md,
 * workloadapiwitsvid.proto): message shapes and the WIT bundle. keel signs
 * WITs with the trust domain's JWT keys under their own key IDs
 * (`wit-<kid>`, src/spiffe/wit-svid.ts), so the WIT bundle of the agent's
 * trust domain is derived from its JWT bundle. Federated trust domains get
 * no WIT bundle: their JWT keys say nothing about what signs their WITs.
 */
import { jwtBundleFromJson } from '../../spiffe/bundle.js';
import { witAuthoritiesOf, witBundleJson } from '../../spiffe/wit-svid.js';
import type { BundleSnapshot } from './identity-source.js';

export interface WitSvidMessage {
  spiffe_id: string;
  wit_svid: string;
  wit_svid_key: string;
  hint: string;
}
export interface WitSvidResponse {
  svids: WitSvidMessage[];
}
export interface WitBundlesResponse {
  bundles: Record<string, string>;
}

/** WITBundlesResponse: the agent's own trust domain, its JWT keys as `wit-svid` JWKs. */
export function witBundlesResponse(bundles: BundleSnapshot): WitBundlesResponse {
  const own = bundles.own;
  const jwt = jwtBundleFromJson(own.trustDomain, own.jwks);
  return { bundles: { [own.trustDomain.idString]: witBundleJson(witAuthoritiesOf(jwt.jwtAuthorities)) } };
}
