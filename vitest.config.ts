import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each integration test starts its own swtpm / SoftHSM token; two cores cannot
    // carry many at once, and TPM round trips are latency-bound, not CPU-bound.
    pool: 'forks',
    maxWorkers: 4,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
