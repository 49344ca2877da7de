#!/usr/bin/env bash
# Sets up, then runs keel's demo on the embedded default: simulated TPM and HSM, SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec node dist/src/cli/main.js demo "$@"
