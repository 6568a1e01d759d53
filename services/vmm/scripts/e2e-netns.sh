#!/usr/bin/env bash
# Manual end-to-end run of the vmm with the real services, inside a private
# network namespace (re-execs itself under `unshare -n`): a local registry on
# 127.0.0.1, `banger up` on a temp BANGER_HOME, the fixture kernel imported,
# the bookworm test image pulled, `vm create --nat`, `vm ssh -- id`,
# `vm exec`, stop/start, rm, and a check that nothing is left behind.
# Prints create→ssh timings. Needs root and a `cargo build --workspace`.
#   services/vmm/scripts/e2e-netns.sh [bookworm|busybox]
set -euo pipefail
kind=${1:-bookworm}
if [ -z "${BANGER_E2E_IN_NETNS:-}" ]; then
  exec env BANGER_E2E_IN_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up
repo=$(cd "$(dirname "$0")/../../.." && pwd)
bin=$repo/target/debug
shared=${BANGER_SHARED_DIR:-$repo/../shared}
home=$(mktemp -d /tmp/banger-e2e.XXXXXX)
export BANGER_HOME=$home XDG_CONFIG_HOME=$home/config
port=5055
cleanup() {
  "$bin/banger" down >/dev/null 2>&1 || true
  [ -n "${reg_pid:-}" ] && kill "$reg_pid" 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$home/registry"
cat >"$home/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $home/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$home/registry.yml" >"$home/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
"$repo/scripts/make-test-image.sh" "$kind" "127.0.0.1:$port" "library/$kind:latest" >/dev/null

guest=$(mktemp -d)
"$repo/scripts/build-guest.sh" "$guest/guest" >/dev/null
cat >"$home/banger.toml" <<TOML
[imagestore]
insecure_registries = ["127.0.0.1:$port"]
guest_dir = "$guest/guest"
[vmm]
qemu_accel = "tcg"
default_kernel = "generic-6-12"
TOML
PATH=$bin:$PATH "$bin/banger" up
zstd -dq "$shared/fixtures/kernels/vmlinux-6.12-x86_64.zst" -o "$home/vmlinux"
"$bin/banger" kernel import generic-6-12 --vmlinux "$home/vmlinux"
"$bin/banger" image pull "127.0.0.1:$port/library/$kind:latest" --name "$kind"

t0=$(date +%s.%N)
"$bin/banger" vm create --name testbox --image "$kind" --nat --timings
t1=$(date +%s.%N)
"$bin/banger" vm ssh testbox -- "id; uname -r; systemctl is-active banger-agent"
t2=$(date +%s.%N)
"$bin/banger" vm exec testbox -- cat /etc/os-release | head -2
"$bin/banger" vm list

# The vmm restarts with the VM running: it adopts it, the VM stays reachable.
kill "$(cat "$home/run/vmm.pid")"
while [ -e "$home/run/vmm.sock" ]; do sleep 0.1; done
# (started directly: `banger up` can misread a just-spawned child's empty
# /proc/<pid>/cmdline as "exited during start-up")
setsid "$bin/banger-vmm" >>"$home/state/logs/vmm.log" 2>&1 </dev/null &
for _ in $(seq 100); do [ -S "$home/run/vmm.sock" ] && break; sleep 0.1; done
"$bin/banger" vm show testbox | grep -E '^(state|pid)'
"$bin/banger" vm ssh testbox -- true

# A second VM gets another IP and reaches the first one's sshd.
"$bin/banger" vm create --name testbox2 --image "$kind" --nat >/dev/null
ip1=$("$bin/banger" --json vm show testbox | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
ip2=$("$bin/banger" --json vm show testbox2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
[ "$ip1" != "$ip2" ] || { echo "both VMs got $ip1" >&2; exit 1; }
"$bin/banger" vm exec testbox2 -- bash -c "exec 3<>/dev/tcp/$ip1/22; head -c7 <&3; echo"
"$bin/banger" vm rm --force testbox2

"$bin/banger" vm stop testbox
# Keep a copy of the disk and the command line for the bare-QEMU baseline.
vmdir=$home/state/vmm/vms/testbox
cp --sparse=always "$vmdir/rootfs.ext4" "$home/bare.ext4"
cmdline=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$vmdir/vm.json")
"$bin/banger" vm start testbox
"$bin/banger" vm ssh testbox -- true
"$bin/banger" vm rm --force testbox
echo "TIMING create(ready) $(echo "$t1 - $t0" | bc) s, create→ssh done $(echo "$t2 - $t0" | bc) s"
leftover=$(ls "$home/state/vmm/vms" 2>/dev/null; ip -o link | grep -c ' bg-' || true)
"$bin/banger" --json network leases
echo "leftover: ${leftover:-none}"

# Baseline: bare QEMU, same kernel, disk and command line, no vmm, no vsock.
"$bin/banger" down >/dev/null
ip link del banger0 2>/dev/null || true  # netd leaves its bridge; free 172.30.0.1
ip tuntap add dev bgbare mode tap && ip addr add 172.30.0.1/24 dev bgbare && ip link set bgbare up
ip=$(echo "$cmdline" | sed -n 's/.*ip=\([0-9.]*\):.*/\1/p')
b0=$(date +%s.%N)
qemu-system-x86_64 -M microvm -accel tcg -cpu max -smp 1 -m 1024M -nodefaults -nographic \
  -no-reboot -monitor none -serial "file:$home/bare.console" -kernel "$home/vmlinux" \
  -append "$cmdline" -drive "id=root,file=$home/bare.ext4,format=raw,if=none" \
  -device virtio-blk-device,drive=root -netdev tap,id=n0,ifname=bgbare,script=no,downscript=no \
  -device virtio-net-device,netdev=n0 &
qpid=$!
for _ in $(seq 480); do
  timeout 2 bash -c "exec 3<>/dev/tcp/$ip/22; head -c4 <&3 | grep -q SSH-" 2>/dev/null && break
  sleep 0.25
done
b1=$(date +%s.%N)
kill $qpid
echo "TIMING bare qemu boot to ssh banner $(echo "$b1 - $b0" | bc) s"
