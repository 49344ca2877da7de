#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Types of everything, tests and benchmarks included (vitest strips types without checking them).
npm run --silent typecheck
npx vitest run "$@"
