#!/usr/bin/env bash
# Benchmark (not a test): N VMs created at once (default 10) against one
# create alone, in the same run: create→ready of each (`vm create` returns
# when the VM is ready), p50/p95 of the N, and the ratio p50 / single.
# Tiny busybox guests (the agent supervised as PID 1 by first boot), QEMU
# TCG, no NAT.
#
#   scripts/bench/concurrency.sh [N] [bookworm|busybox]
#
# The same run also measures the hardware floor: N bare QEMU boots of the
# same kernel and image at once against one alone (boot → a marker the
# guest's init prints on its console), so banger's ratio can be judged
# against what N TCG guests on this many cores cost with no banger at all.
# Goal: p50 ratio <= 1.5 on the development machine (2 cores). Needs root,
# QEMU, vhost-device-vsock, umoci, skopeo, busybox-static, debugfs.
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
# The host's TSC rate banger passes (the bare boots use the same).
tsc=$(tr '\0' '\n' <"/proc/$(b --json vm show single | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')/cmdline" |
  grep -o 'tsc_early_khz=[0-9]*' | head -1 || true)
b vm rm --force single >/dev/null

# The bare guest's init: print the marker, then idle.
printf '#!/bin/sh\necho BENCH-BARE-READY\nexec /bin/sh -c "while :; do sleep 3600; done"\n' >"$work/bare-init"
bare() { # NAME → seconds from QEMU start to the guest init's marker
  local disk=$work/bare-$1.ext4 log=$work/bare-$1.log t0 pid
  cp --reflink=auto --sparse=always "$image_ext4" "$disk"
  debugfs -w -f - "$disk" >/dev/null 2>&1 <<DEBUGFS
write $work/bare-init /bench-init
sif /bench-init mode 0100755
DEBUGFS
  : >"$log"
  t0=$(now)
  qemu-system-x86_64 -bios qboot.rom -M microvm,memory-backend=mem \
    -object memory-backend-memfd,id=mem,size=${mem}M,share=on \
    -accel tcg -cpu max -smp 1 -m "${mem}M" \
    -nodefaults -nographic -no-reboot -monitor none \
    -chardev "file,id=console,path=$log,append=on" -serial chardev:console \
    -kernel "$work/vmlinux" \
    -append "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/bench-init $tsc" \
    -drive "id=root,file=$disk,format=raw,if=none" -device virtio-blk-device,drive=root \
    >"$work/bare-$1.qemu.log" 2>&1 &
  pid=$!
  until grep -q BENCH-BARE-READY "$log"; do
    kill -0 "$pid" 2>/dev/null || { echo "bare QEMU $1 exited:" >&2; tail -n 5 "$work/bare-$1.qemu.log" "$log" >&2; return 1; }
    sleep 0.1
  done
  awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.3f\n", b-a}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -f "$disk"
}

bare warm >/dev/null
bare_single=$(bare single)
for i in $(seq 1 "$n"); do
  bare "$i" >"$work/bare-$i.secs" &
done
wait
cat "$work"/bare-[0-9]*.secs >"$work/bare.all"
[ "$(wc -l <"$work/bare.all")" = "$n" ] || { echo "only $(wc -l <"$work/bare.all") of $n bare boots succeeded" >&2; exit 1; }
bare_p50=$(median <"$work/bare.all")
bare_p95=$(percentile 95 <"$work/bare.all")

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
for phase in resolving network disk identity booting waiting; do
  one=$(awk -v p="$phase" '$1 == p {print $2}' "$work/single.out")
  many=$(for i in $(seq 1 "$n"); do awk -v p="$phase" '$1 == p {print $2}' "$work/c$i.out"; done | median)
  printf '    %-10s single %6.2fs   p50 of %s at once %6.2fs\n' "$phase" "${one:-0}" "$n" "${many:-0}"
done
echo "  floor, bare QEMU boot → init marker: single ${bare_single}s, $n at once p50 ${bare_p50}s, p95 ${bare_p95}s"
echo "  floor p50 ratio: $(ratio "$bare_p50" "$bare_single")x (N TCG guests on $(nproc) cores, no banger)"
