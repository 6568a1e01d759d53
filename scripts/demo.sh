#!/usr/bin/env bash
# Sets up everything on a fresh Debian 12 machine and runs banger's main job
# in a private network namespace that this script creates itself (netd makes
# a bridge, NAT rules and taps; none of that touches the host's network).
#
#   scripts/demo.sh            set up, start the services, show their status
#
# Everything lives under $BANGER_HOME (default: a fresh temp dir) and is
# stopped when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "${BANGER_DEMO_IN_NETNS:-}" != 1 ]; then
  scripts/setup.sh
  [ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates a network namespace)" >&2; exit 1; }
  export BANGER_DEMO_IN_NETNS=1
  exec unshare --net -- "$0" "$@"
fi

ip link set lo up
export BANGER_HOME="${BANGER_HOME:-$(mktemp -d /tmp/banger-demo.XXXXXX)}"
banger="$repo/target/debug/banger"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
cleanup() { step "banger down"; "$banger" down || true; }
trap cleanup EXIT

echo "demo: BANGER_HOME=$BANGER_HOME (network namespace private to this script)"
step "banger up"
"$banger" up
step "banger status"
"$banger" status
