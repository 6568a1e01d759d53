#!/usr/bin/env bash
# Builds the statically linked banger-agent and assembles the guest bundle
# that imagestore injects into every image:
#   <out>/banger-agent               static x86_64 binary
#   <out>/banger-first-boot          symlink to banger-agent (its first-boot mode)
#   <out>/banger-agent.service       systemd units
#   <out>/banger-first-boot.service
#   <out>/openrc/banger-agent        openrc service script
# Usage: scripts/build-guest.sh [OUT]   (default: target/debug/guest)
# The static build uses its own target dir (target/guest-build) so it
# neither fights `cargo test` for the build lock nor invalidates the
# workspace's normal artifacts with different RUSTFLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/debug/guest}
target=x86_64-unknown-linux-gnu
build_dir=${BANGER_GUEST_TARGET_DIR:-target/guest-build}

# The explicit --target keeps +crt-static off build scripts and proc-macros.
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$build_dir" \
  nice -n 10 cargo build --locked --quiet -p banger-agent --release --target "$target"

mkdir -p "$out/openrc"
install -m 0755 "$build_dir/$target/release/banger-agent" "$out/banger-agent.tmp"
mv -f "$out/banger-agent.tmp" "$out/banger-agent"
# Multi-call: the agent runs first boot when invoked by this name.
ln -sfn banger-agent "$out/banger-first-boot"
install -m 0644 guest/units/banger-agent.service "$out/banger-agent.service"
install -m 0644 guest/units/banger-first-boot.service "$out/banger-first-boot.service"
install -m 0755 guest/openrc/banger-agent "$out/openrc/banger-agent"
echo "$out"
