#!/usr/bin/env bash
# Installs keel on a Debian 12 host with Node 20 (see docs/install.md):
#
#   <prefix>                      (default /opt/keel) the built checkout: dist/, production
#                                 node_modules, the native addon, proto/, firmware-policies/, docs/
#   /usr/local/bin/keel           wrapper: exec node <prefix>/dist/src/cli/main.js "$@"
#   /usr/local/lib/systemd/system keel-server.service, keel-agent.service
#   /etc/keel                     root:keel 0750, server.yaml.example, agent.yaml.example
#                                 (server.yaml / agent.yaml are never written)
#   /var/lib/keel                 keel:keel 0700 (server state)
#   /var/lib/keel-agent           keel-agent:keel-agent 0700 (agent state)
#   users keel, keel-agent        system users, no login shell, no home
#
# usage: scripts/install.sh [--prefix DIR] [--root DIR] [--dry-run] [--no-build]
#        scripts/install.sh --uninstall [--purge] [--prefix DIR] [--root DIR] [--dry-run]
#
# --root DIR (or DESTDIR=DIR): install below DIR instead of / (for packaging
#   and tests). Users are not created there and nothing is chowned: what would
#   be done is printed ("skip:" lines). systemctl is never called.
# --dry-run: print every action ("+" lines), change nothing.
# --uninstall: stop and remove the units, the wrapper and the prefix; keep
#   /etc/keel, /var/lib/keel, /var/lib/keel-agent and the users unless --purge.
# Safe to run again: a second run gives the same result, and an upgrade is a re-run.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/keel
ROOT="${DESTDIR:-}"
DRY=0
ACTION=install
PURGE=0
BUILD=1
MARKER=.keel-install          # in <prefix>: proves the directory is ours before rm -rf
WRAPPER_TAG='# keel wrapper, installed by scripts/install.sh'
UNITS=(keel-server.service keel-agent.service)
UNIT_DIR=/usr/local/lib/systemd/system
BIN=/usr/local/bin/keel

die() { echo "install.sh: $*" >&2; exit 1; }
usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --root=*) ROOT="${1#*=}"; shift ;;
    --dry-run) DRY=1; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case "$PREFIX" in
  /*) ;;
  *) die "--prefix must be an absolute path: $PREFIX" ;;
esac
PREFIX="${PREFIX%/}"
case "$PREFIX" in
  ''|/usr|/usr/local|/opt|/etc|/var|/var/lib|/home|/root|/bin|/sbin|/lib|/tmp) die "refusing --prefix $PREFIX: keel needs a directory of its own" ;;
esac
if [ -n "$ROOT" ]; then
  case "$ROOT" in /*) ;; *) ROOT="$(pwd)/$ROOT" ;; esac
  ROOT="${ROOT%/}"
  [ -n "$ROOT" ] || die "--root / is the real system: leave --root out"
fi
if [ -z "$ROOT" ] && [ "$DRY" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (or with --root DIR / --dry-run)"
fi

say() { echo "install.sh: $*"; }
run() {
  echo "+ $*"
  if [ "$DRY" -eq 0 ]; then "$@"; fi
}
# What cannot be done below --root (users, ownership, systemctl).
skip() { echo "skip: $*"; }
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }
r() { echo "$ROOT$1"; }

# chown only on the real system; below --root the users do not exist there.
own() {
  local owner="$1" path="$2"
  if [ -n "$ROOT" ]; then skip "chown $owner $path"; else run chown "$owner" "$(r "$path")"; fi
}

# mkdir -p + exact mode + owner, without touching what is inside.
ensure_dir() {
  local path="$1" mode="$2" owner="$3"
  [ -d "$(r "$path")" ] || run mkdir -p "$(r "$path")"
  run chmod "$mode" "$(r "$path")"
  own "$owner" "$path"
}

ensure_user() {
  local name="$1" comment="$2"
  if [ -n "$ROOT" ]; then
    skip "useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $name"
    return
  fi
  if getent passwd "$name" >/dev/null; then
    say "user $name exists"
  else
    run useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin --comment "$comment" "$name"
  fi
}

need_build() {
  [ -f "$SRC/dist/src/cli/main.js" ] && [ -f "$SRC/native/build/Release/keel_native.node" ] && [ -d "$SRC/node_modules" ] && return 1
  return 0
}

install_tree() {
  local node wrapper
  wrapper="$(r "$BIN")"
  # Refuse before changing anything.
  if [ -e "$wrapper" ] && ! grep -qF "$WRAPPER_TAG" "$wrapper" 2>/dev/null; then
    die "$wrapper exists and is not keel's wrapper: refusing to replace it"
  fi
  node="$(command -v node || true)"
  [ -n "$node" ] || die "node is not on PATH (keel needs Node >= 20)"
  "$node" -e 'const [M]=process.versions.node.split(".").map(Number); if (M<20) { console.error("keel needs Node >= 20, found "+process.version); process.exit(1) }'

  if need_build; then
    [ "$BUILD" -eq 1 ] || die "$SRC is not built (dist/, native/build/Release/keel_native.node, node_modules): run scripts/setup.sh, or leave --no-build out"
    say "building $SRC (npm ci, npm run build)"
    (cd "$SRC" && run npm ci --no-audit --no-fund && run npm run --silent build)
  fi

  local dest stage old
  dest="$(r "$PREFIX")"
  stage="$dest.new.$$"
  old="$dest.old.$$"
  if [ -e "$dest" ] && [ ! -f "$dest/$MARKER" ]; then
    die "$dest exists and was not installed by keel (no $MARKER): refusing to replace it"
  fi
  # Build the new tree beside the old one, then swap: a running service keeps
  # its open files, and a failed copy leaves the old install as it was.
  run mkdir -p "$(dirname "$dest")"
  run rm -rf "$stage"
  run mkdir -p "$stage/native/build/Release"
  run cp -a "$SRC/package.json" "$SRC/package-lock.json" "$SRC/dist" "$SRC/node_modules" \
    "$SRC/proto" "$SRC/firmware-policies" "$SRC/docs" "$stage/"
  [ -f "$SRC/README.md" ] && run cp -a "$SRC/README.md" "$stage/"
  run cp -a "$SRC/native/build/Release/keel_native.node" "$stage/native/build/Release/"
  run cp -a "$SRC/packaging" "$stage/"
  # Drop the dev dependencies (tsc, vitest, …): offline, from the lockfile.
  (cd "$stage" 2>/dev/null || cd "$SRC"; run npm prune --omit=dev --offline --no-audit --no-fund --loglevel=error)
  if [ "$DRY" -eq 0 ]; then
    (cd "$SRC" && node -p 'require("./package.json").version') >"$stage/$MARKER"
  else
    echo "+ write $stage/$MARKER"
  fi
  # root owns the code, nobody else may write it; services only read it.
  run chown -R 0:0 "$stage" 2>/dev/null || run chown -R "$(id -u):$(id -g)" "$stage"
  run chmod -R u+rwX,go+rX,go-w "$stage"
  run chmod 0755 "$stage"
  if [ -e "$dest" ]; then run mv "$dest" "$old"; fi
  run mv "$stage" "$dest"
  run rm -rf "$old"

  # The wrapper on PATH.
  run mkdir -p "$(dirname "$wrapper")"
  if [ "$DRY" -eq 0 ]; then
    cat >"$wrapper.tmp" <<EOF
#!/bin/sh
$WRAPPER_TAG
# The packaged server's admin socket (keel-server.service, RuntimeDirectory=keel/server).
if [ -z "\${KEEL_ADMIN_SOCKET:-}" ] && [ -d /run/keel/server ]; then
  KEEL_ADMIN_SOCKET=/run/keel/server/admin.sock
  export KEEL_ADMIN_SOCKET
fi
exec $node $PREFIX/dist/src/cli/main.js "\$@"
EOF
    chmod 0755 "$wrapper.tmp"
    mv -f "$wrapper.tmp" "$wrapper"
  fi
  echo "+ write $wrapper (exec $node $PREFIX/dist/src/cli/main.js)"
}

install_units() {
  local dir u
  dir="$(r "$UNIT_DIR")"
  run mkdir -p "$dir"
  for u in "${UNITS[@]}"; do
    if [ "$PREFIX" = /opt/keel ]; then
      run install -m 0644 "$SRC/packaging/systemd/$u" "$dir/$u"
    else
      # Documentation= names the prefix.
      echo "+ install -m 0644 $SRC/packaging/systemd/$u $dir/$u (Documentation= under $PREFIX)"
      if [ "$DRY" -eq 0 ]; then
        sed "s|file:/opt/keel/|file:$PREFIX/|g" "$SRC/packaging/systemd/$u" >"$dir/$u.tmp"
        chmod 0644 "$dir/$u.tmp"
        mv -f "$dir/$u.tmp" "$dir/$u"
      fi
    fi
  done
}

install_config() {
  local f
  ensure_dir /etc/keel 0750 root:keel
  for f in server.yaml.example agent.yaml.example; do
    # Ours: replaced on every run. The real server.yaml / agent.yaml are the admin's and never written.
    run install -m 0640 "$SRC/packaging/config/$f" "$(r /etc/keel/$f)"
    own root:keel "/etc/keel/$f"
  done
  for f in server.yaml agent.yaml; do
    if [ -e "$(r /etc/keel/$f)" ]; then say "keeping /etc/keel/$f"; fi
  done
}

do_install() {
  say "installing keel from $SRC into ${ROOT:-/} (prefix $PREFIX)"
  ensure_user keel "keel server"
  ensure_user keel-agent "keel agent"
  if [ -z "$ROOT" ] && ! getent group tss >/dev/null; then
    say "warning: no group tss (Debian's tpm-udev makes /dev/tpmrm0 root:tss 0660): keel-agent.service needs it (apt-get install tpm-udev)"
  fi
  install_tree
  install_config
  ensure_dir /var/lib/keel 0700 keel:keel
  ensure_dir /var/lib/keel-agent 0700 keel-agent:keel-agent
  install_units
  if systemd_running; then
    run systemctl daemon-reload
    # An upgrade: restart what runs (nothing else is started or enabled).
    run systemctl try-restart "${UNITS[@]}"
  else
    skip "systemctl daemon-reload (systemd is not running${ROOT:+, or --root})"
  fi
  say "done. Next: write /etc/keel/server.yaml and/or /etc/keel/agent.yaml from the examples, then"
  say "  systemctl enable --now keel-server   # and/or keel-agent (see docs/install.md)"
}

do_uninstall() {
  local u dest
  local what=""
  if [ "$PURGE" -eq 1 ]; then what=", purging /etc/keel, the state directories and the users"; fi
  say "uninstalling keel from ${ROOT:-/} (prefix $PREFIX)$what"
  if systemd_running; then
    run systemctl disable --now "${UNITS[@]}" || true
  else
    skip "systemctl disable --now ${UNITS[*]} (systemd is not running${ROOT:+, or --root})"
  fi
  for u in "${UNITS[@]}"; do
    if [ -e "$(r "$UNIT_DIR/$u")" ]; then run rm -f "$(r "$UNIT_DIR/$u")"; fi
  done
  if systemd_running; then run systemctl daemon-reload; fi
  if [ -e "$(r "$BIN")" ]; then
    if grep -qF "$WRAPPER_TAG" "$(r "$BIN")"; then run rm -f "$(r "$BIN")"; else say "leaving $BIN: not keel's wrapper"; fi
  fi
  dest="$(r "$PREFIX")"
  if [ -e "$dest" ]; then
    if [ -f "$dest/$MARKER" ]; then run rm -rf "$dest"; else say "leaving $dest: not installed by keel (no $MARKER)"; fi
  fi
  if [ "$PURGE" -eq 1 ]; then
    run rm -rf "$(r /etc/keel)" "$(r /var/lib/keel)" "$(r /var/lib/keel-agent)"
    for u in keel-agent keel; do
      if [ -n "$ROOT" ]; then skip "userdel $u"
      elif getent passwd "$u" >/dev/null; then run userdel "$u"
      fi
    done
  else
    say "kept /etc/keel, /var/lib/keel, /var/lib/keel-agent and the users keel, keel-agent (--purge removes them)"
  fi
  say "done."
}

if [ "$ACTION" = install ]; then do_install; else do_uninstall; fi
