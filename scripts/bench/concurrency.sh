#!/usr/bin/env bash
# Benchmark (not a test): N VMs created at once (default 10) against one
# create alone, in the same run: create→ready of each (`vm create` returns
# when the VM is ready), p50/p95 of the N, and the ratio p50 / single.
# Tiny busybox guests (the agent supervised as PID 1 by first boot), QEMU
# TCG, no NAT.
#
#   scripts/bench/concurrency.sh [N] [bookworm|busybox]
#
# Goal: p50 ratio <= 1.5 on the development machine (2 cores). Needs root,
# QEMU, vhost-device-vsock, umoci, skopeo, busybox-static.
. "$(dirname "$0")/lib.sh"
bench_netns "$0" "$@"
n=${1:-10}
kind=${2:-busybox}
bench_up "$kind"
mem=$([ "$kind" = busybox ] && echo 256 || echo 512)

create() { # NAME → seconds to ready; $work/NAME.host: seconds of host-side phases
  local t0 t1
  t0=$(now)
  b vm create --image bench --name "$1" --memory "$mem" --timings >"$work/$1.out" 2>&1 ||
    { echo "create $1 failed:" >&2; tail -20 "$work/$1.out" >&2; return 1; }
  t1=$(now)
  # Everything but the guest's own boot (`waiting`): what banger does.
  awk '$1 ~ /^(resolving|network|disk|identity|booting)$/ {s += $2} END {printf "%.3f\n", s}' \
    "$work/$1.out" >"$work/$1.host"
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", b-a}'
}

# Warm-up (page cache of kernel and image), not counted.
create warm >/dev/null
b vm rm --force warm >/dev/null

single=$(create single)
single_host=$(cat "$work/single.host")
b vm rm --force single >/dev/null

t0=$(now)
for i in $(seq 1 "$n"); do
  create "c$i" >"$work/c$i.secs" &
done
wait
wall=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.2f", b-a}')
cat "$work"/c*.secs >"$work/all"
[ "$(wc -l <"$work/all")" = "$n" ] || { echo "only $(wc -l <"$work/all") of $n creates succeeded" >&2; exit 1; }
p50=$(median <"$work/all")
p95=$(percentile 95 <"$work/all")
host_p50=$(cat "$work"/c*.host | median)
for i in $(seq 1 "$n"); do b vm rm --force "c$i" >/dev/null; done

echo "concurrency ($kind, $n at once, QEMU TCG, $(nproc) cores):"
echo "  single create→ready: ${single}s"
echo "  $n at once: p50 ${p50}s, p95 ${p95}s (all done after ${wall}s)"
echo "  p50 ratio: $(ratio "$p50" "$single")x (goal <= 1.5), p95 ratio: $(ratio "$p95" "$single")x"
echo "  banger's own phases (all but the guest's boot): single ${single_host}s, p50 of $n ${host_p50}s"
