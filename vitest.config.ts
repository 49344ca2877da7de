import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Each integration test starts its own swtpm / SoftHSM token; two cores cannot
    // carry many at once, and TPM round trips are latency-bound, not CPU-bound.
    pool: 'forks',
    // Memory checks (floods must leave the heap flat) collect garbage first.
    execArgv: ['--expose-gc'],
    maxWorkers: 4,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
