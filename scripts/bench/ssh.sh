#!/usr/bin/env bash
# Benchmark (not a test): `banger vm ssh NAME -- true` against a plain
# `ssh -i KEY root@IP true` to the same guest, alternating, N pairs
# (default 10) in one run; prints the medians and their ratio, and the
# first `vm ssh` after create (which opens the connection later calls share).
#
#   scripts/bench/ssh.sh [N] [bookworm]
#
# Goal: ratio <= 1.1. Needs root, QEMU, vhost-device-vsock.
. "$(dirname "$0")/lib.sh"
bench_netns "$0" "$@"
n=${1:-10}
kind=${2:-bookworm}
bench_up "$kind"

since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f\n", b-a}'; }

b vm create --image bench --name sshbench >/dev/null
ip=$(b --json vm show sshbench | python3 -c 'import json,sys; print(json.load(sys.stdin)["ip"])')
t0=$(now)
b vm ssh sshbench -- true
first=$(since "$t0")

plain() {
  ssh -q -i "$ssh_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o BatchMode=yes "root@$ip" true
}
: >"$work/banger"
: >"$work/plain"
for i in $(seq 1 "$n"); do
  if [ $((i % 2)) = 1 ]; then
    t0=$(now); b vm ssh sshbench -- true; since "$t0" >>"$work/banger"
    t0=$(now); plain; since "$t0" >>"$work/plain"
  else
    t0=$(now); plain; since "$t0" >>"$work/plain"
    t0=$(now); b vm ssh sshbench -- true; since "$t0" >>"$work/banger"
  fi
done
mb=$(median <"$work/banger")
mp=$(median <"$work/plain")
echo "ssh ($kind, QEMU TCG): $n alternating pairs"
echo "  first vm ssh after create: ${first}s (opens the shared connection)"
echo "  vm ssh median ${mb}s, plain ssh median ${mp}s, ratio $(ratio "$mb" "$mp") (goal <= 1.1)"
b vm rm --force sshbench >/dev/null
