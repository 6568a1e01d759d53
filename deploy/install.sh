#!/usr/bin/env bash
# Installs banger as systemd services: binaries, units (one socket + one
# service per daemon), users, directories and a default config.
#
#   deploy/install.sh                  build release binaries, install, start
#   deploy/install.sh --root DIR       install into an offline root (image, container)
#   deploy/install.sh --bin-dir DIR    use already built binaries from DIR
#
# Re-running it upgrades binaries and units and keeps an existing config.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=""
bin_src=""
prefix=/usr/local
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$(realpath "$2"); shift 2 ;;
    --bin-dir) bin_src=$(realpath "$2"); shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
log() { printf 'install: %s\n' "$*" >&2; }

if [ -z "$bin_src" ]; then
  log "building release binaries"
  (cd "$repo" && cargo build --release --locked --bins)
  bin_src="$repo/target/release"
fi

bindir="$prefix/bin"
services=(kernelcat imagestore netd vmm)
install -d "$root$bindir" "$root/etc/systemd/system" "$root/etc/sysusers.d" \
  "$root/etc/tmpfiles.d" "$root/etc/banger"
for bin in banger banger-kernelcat banger-imagestore banger-netd banger-vmm; do
  install -m 0755 "$bin_src/$bin" "$root$bindir/$bin"
done
# The guest bundle imagestore injects into every image (its default path).
guest_src="$bin_src/guest"
[ -d "$guest_src" ] || guest_src="$repo/target/debug/guest"
if [ -d "$guest_src" ]; then
  install -d "$root/usr/lib/banger/guest"
  cp -a "$guest_src/." "$root/usr/lib/banger/guest/"
else
  log "no guest bundle found (run scripts/build-guest.sh): images will lack the agent"
fi
for svc in "${services[@]}"; do
  sed "s|@BINDIR@|$bindir|g" "$repo/deploy/systemd/banger-$svc.service" \
    > "$root/etc/systemd/system/banger-$svc.service"
  install -m 0644 "$repo/deploy/systemd/banger-$svc.socket" "$root/etc/systemd/system/"
done
install -m 0644 "$repo/deploy/sysusers.d/banger.conf" "$root/etc/sysusers.d/banger.conf"
install -m 0644 "$repo/deploy/tmpfiles.d/banger.conf" "$root/etc/tmpfiles.d/banger.conf"
if [ ! -e "$root/etc/banger/banger.toml" ]; then
  install -m 0644 "$repo/configs/banger.toml" "$root/etc/banger/banger.toml"
fi

units=()
for svc in "${services[@]}"; do units+=("banger-$svc.socket" "banger-$svc.service"); done
if [ -n "$root" ]; then
  systemd-sysusers --root="$root"
  systemctl --root="$root" enable "${units[@]}"
  log "installed into $root; the units start when that system boots"
elif [ -d /run/systemd/system ]; then
  systemd-sysusers /etc/sysusers.d/banger.conf
  systemd-tmpfiles --create /etc/tmpfiles.d/banger.conf
  systemctl daemon-reload
  systemctl enable --now "${units[@]}"
  log "installed and started; add users to group banger to let them use it"
else
  log "files installed, but systemd is not running here: start the units when it is"
fi
