#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (Node 20 already present) to build, test
# and run keel: Debian packages only when missing, npm ci, the native addon and
# the TypeScript build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(swtpm swtpm-tools softhsm2 libtss2-dev tpm2-tools opensc libp11-kit-dev pkg-config openssl python3 python3-jwt python3-jwcrypto make g++ postgresql faketime python3-seccomp systemd)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "keel setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

node -e 'const [M]=process.versions.node.split(".").map(Number); if (M<20) { console.error("keel needs Node >= 20, found "+process.version); process.exit(1) }'

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
fi
npm run --silent build
