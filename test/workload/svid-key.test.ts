/** Workload SVID key types: each one the agent can be configured with yields a key whose CSR the CA's parser accepts. */
import { describe, expect, it } from 'vitest';
import { svidKeyGenerator, SVID_KEY_TYPES } from '../../src/agent/workload/svid-key.js';
import { agentConfigSchema } from '../../src/config/index.js';
import { parseCsr } from '../../src/server/ca/index.js';
import { buildCsr } from '../../src/spiffe/csr.js';

const expected = {
  'ec-p256': { type: 'ec', detail: { namedCurve: 'prime256v1' }, csr: 'ec-p256' },
  'ec-p384': { type: 'ec', detail: { namedCurve: 'secp384r1' }, csr: 'ec-p384' },
  'rsa-2048': { type: 'rsa', detail: { modulusLength: 2048 }, csr: 'rsa' },
} as const;

describe('workload SVID key types', () => {
  for (const t of SVID_KEY_TYPES) {
    it(`${t}: the key has that type and size, and the CA's CSR parser accepts its CSR as ${expected[t].csr}`, () => {
      const key = svidKeyGenerator(t)();
      expect(key.asymmetricKeyType).toBe(expected[t].type);
      expect(key.asymmetricKeyDetails).toMatchObject(expected[t].detail);
      const parsed = parseCsr(buildCsr(key));
      expect(parsed.keyType).toBe(expected[t].csr);
    });
  }

  it('the config takes exactly these values and refuses others, naming the key', () => {
    const base = { trust_domain: 'example.org', server: { address: 'h:1', bundle: '/b.pem' }, data_dir: '/d' };
    for (const t of SVID_KEY_TYPES) {
      expect(agentConfigSchema.parse({ agent: { ...base, workload_api: { svid_key_type: t } } }).agent.workload_api.svid_key_type).toBe(t);
    }
    const bad = agentConfigSchema.safeParse({ agent: { ...base, workload_api: { svid_key_type: 'ed25519' } } });
    expect(bad.success).toBe(false);
    expect(bad.error!.issues[0]!.path).toEqual(['agent', 'workload_api', 'svid_key_type']);
  });
});
