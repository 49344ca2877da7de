/** The firmware policies of src/policy as the attestor's MeasurementPolicy. */
import { evaluatePolicies, type FirmwarePolicy } from '../../policy/index.js';
import type { MeasurementPolicy } from './types.js';

const MAX_DETAIL_VIOLATIONS = 4;

/** A node passes when at least one policy holds; it gets the selectors of every policy that holds. */
export function firmwarePolicies(policies: readonly FirmwarePolicy[]): MeasurementPolicy {
  return {
    evaluate(m) {
      const r = evaluatePolicies(policies, m);
      // The policy schema refuses the server's reserved selectors, so what passes is the policies' own.
      if (r.pass) return { ok: true, selectors: r.selectors };
      if (policies.length === 0) return { ok: false, detail: 'no firmware policy is configured' };
      const parts = [...r.results].map(([name, res]) => {
        if (res.pass) return name;
        const shown = res.violations.slice(0, MAX_DETAIL_VIOLATIONS).map((v) => `${v.rule}: ${v.detail}`);
        const more = res.violations.length > MAX_DETAIL_VIOLATIONS ? ` (+${res.violations.length - MAX_DETAIL_VIOLATIONS} more)` : '';
        return `${name}: ${shown.join('; ')}${more}`;
      });
      return { ok: false, detail: `no firmware policy holds — ${parts.join(' | ')}` };
    },
  };
}
