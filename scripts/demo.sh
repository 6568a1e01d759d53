#!/usr/bin/env bash
# Sets up everything on a fresh Debian 12 machine and runs banger's main job:
# a Debian bookworm image pulled as docker.io/library/debian:bookworm, a guest
# kernel, a VM with NAT, and `banger vm ssh testbox -- id`.
#
#   scripts/demo.sh
#
# It runs in a private network namespace that it creates itself: netd's
# bridge, taps and NAT rules, and the VM, never touch the host's network.
# With no internet here, the image comes from a registry on 127.0.0.1 that
# this script fills (debootstrap from the Debian mirror, pushed with skopeo)
# and that banger reaches through its docker.io mirror setting. The kernel is
# the shared fixture (../shared/fixtures/kernels), or set BANGER_KERNEL to a
# vmlinux built by scripts/make-generic-kernel.sh.
# Everything lives under $BANGER_HOME (default: a fresh temp dir) and is
# removed from the services when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "${BANGER_DEMO_IN_NETNS:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates a network namespace)" >&2; exit 1; }
  scripts/setup.sh
  # debootstrap needs the Debian mirror, so the image is built (or reused
  # from target/test-cache) out here; the namespace below has no route out.
  printf '\n\033[1m$ scripts/make-test-image.sh bookworm - library/debian:bookworm\033[0m   (debootstrap; cached)\n' >&2
  scripts/make-test-image.sh bookworm - library/debian:bookworm >/dev/null
  export BANGER_DEMO_IN_NETNS=1
  exec unshare --net -- "$0" "$@"
fi

ip link set lo up
export BANGER_HOME="${BANGER_HOME:-$(mktemp -d /tmp/banger-demo.XXXXXX)}"
banger="$repo/target/debug/banger"
step() { printf '\n\033[1m$ %s\033[0m\n' "$*" >&2; }
run() { step "banger $*"; "$banger" "$@"; }

# A registry on 127.0.0.1 only (the packaged config would listen everywhere).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg="$BANGER_HOME/registry"
mkdir -p "$reg"
cat > "$reg/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $reg/data}}
http: {addr: 127.0.0.1:$port}
YAML
/usr/bin/docker-registry serve "$reg/config.yml" >"$reg/log" 2>&1 &
registry_pid=$!
cleanup() {
  status=$?
  step "cleanup"
  "$banger" vm rm --force testbox >/dev/null 2>&1 || true
  "$banger" down || true
  kill "$registry_pid" 2>/dev/null || true
  exit $status
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

cat > "$BANGER_HOME/banger.toml" <<TOML
[imagestore]
insecure_registries = ["127.0.0.1:$port"]
[imagestore.mirrors]
"docker.io" = ["http://127.0.0.1:$port"]
[vmm]
hypervisor = "qemu"
qemu_accel = "auto"
TOML
echo "demo: BANGER_HOME=$BANGER_HOME, registry 127.0.0.1:$port, network namespace private to this script" >&2

step "scripts/make-test-image.sh bookworm 127.0.0.1:$port library/debian:bookworm   (push the cached image)"
scripts/make-test-image.sh bookworm "127.0.0.1:$port" library/debian:bookworm >/dev/null

kernel=${BANGER_KERNEL:-}
if [ -z "$kernel" ]; then
  kernel="$BANGER_HOME/vmlinux"
  zstd -q -d -f "${BANGER_SHARED_DIR:-$repo/../shared}/fixtures/kernels/vmlinux-6.12-x86_64.zst" -o "$kernel"
fi

run up
run status
run kernel import generic-6.12 --vmlinux "$kernel"
run image pull docker.io/library/debian:bookworm --kernel-ref generic-6.12
run vm create --image debian-bookworm --name testbox --nat --timings
run vm ssh testbox -- "id; uname -r; systemctl is-active banger-agent"
run vm exec testbox -- cat /etc/os-release
run vm list
run network leases
run vm rm --force testbox
