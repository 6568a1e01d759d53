#!/usr/bin/env bash
# Benchmark (not a test): `banger vm create` → `banger vm ssh -- true`
# against a bare `qemu-system-x86_64` boot of the same image and kernel
# → first successful plain `ssh root@IP true`, alternating, PAIRS pairs
# (default 3) in one run; prints each pair and the median ratio.
#
#   scripts/bench/boot.sh [PAIRS] [bookworm]
#
# The bare boot is the image booted by hand the way banger booted it
# before its boot was trimmed: QEMU with banger's own machine arguments
# (qemu.rs, minus the vsock device nobody would add by hand), a sparse copy
# of the image with identity.json and root's authorized_keys put in (not
# timed), and banger's untrimmed command line — first boot as init
# (it applies the identity, then hands over to systemd), no units masked
# beyond the device units the old line masked. banger's side is timed as a
# user sees it: everything from `vm create` to the first command over SSH.
# A run that is not reachable within BENCH_TIMEOUT seconds (default 240; a
# TCG guest occasionally stalls with its timers stopped, banger's or bare)
# is reported and its pair run again, up to 3 times.
# Goal: ratio <= 0.85. Needs root, QEMU, vhost-device-vsock, debugfs.
. "$(dirname "$0")/lib.sh"
bench_netns "$0" "$@"
pairs=${1:-3}
kind=${2:-bookworm}
bench_up "$kind"
timeout=${BENCH_TIMEOUT:-240}
sed -i "s/^ready_timeout_secs = .*/ready_timeout_secs = $timeout/" "$home/banger.toml"
b down >/dev/null 2>&1 && b up >/dev/null 2>&1

# The bare VM's network: a tap of its own, point to point.
ip tuntap add dev bbare0 mode tap
ip addr add 10.250.0.1/24 dev bbare0
ip link set bbare0 up
bare_ip=10.250.0.2

since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b-a}'; }

banger_run() { # i → seconds
  local t0
  t0=$(now)
  if ! b vm create --image bench --name "boot$1" >"$work/boot$1.out" 2>&1; then
    echo "  (banger run $1: $(grep -m1 -i 'error\|did not' "$work/boot$1.out"))" >&2
    b vm rm --force "boot$1" >/dev/null 2>&1 || true
    return 1
  fi
  b vm ssh "boot$1" -- true
  since "$t0"
  # The host's TSC rate banger passes (the bare boot uses the same).
  tsc=$(tr '\0' '\n' <"/proc/$(b --json vm show "boot$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')/cmdline" |
    grep -o 'tsc_early_khz=[0-9]*' | head -1)
  b vm rm --force "boot$1" >/dev/null
}

bare_run() { # i → seconds
  local disk=$work/bare$1.ext4 log=$work/bare$1.log t0 pid
  cp --sparse=always "$image_ext4" "$disk"
  truncate -s +1G "$disk"
  resize2fs -f "$disk" >/dev/null 2>&1
  printf '{\n  "hostname": "bare%s",\n  "ssh_authorized_keys": [\n    "%s"\n  ]\n}\n' \
    "$1" "$(cat "$ssh_key.pub")" >"$work/identity.json"
  cat "$ssh_key.pub" >"$work/authorized_keys"
  debugfs -w -f - "$disk" >/dev/null 2>&1 <<DEBUGFS
mkdir /root/.ssh
mkdir /etc/banger
rm /etc/banger/identity.json
write $work/identity.json /etc/banger/identity.json
rm /root/.ssh/authorized_keys
write $work/authorized_keys /root/.ssh/authorized_keys
sif /root/.ssh mode 040700
sif /root/.ssh/authorized_keys mode 0100600
DEBUGFS
  local line="console=ttyS0 reboot=k panic=1 root=/dev/vda rw"
  line+=" ip=$bare_ip::10.250.0.1:255.255.255.0:bare$1:eth0:off"
  line+=" init=/usr/local/libexec/banger-first-boot $tsc"
  line+=" systemd.mask=dev-ttyS0.device systemd.mask=dev-vdb.device"
  t0=$(now)
  qemu-system-x86_64 -bios qboot.rom -M microvm,memory-backend=mem \
    -object memory-backend-memfd,id=mem,size=1024M,share=on \
    -accel tcg -cpu max -smp 1 -m 1024M \
    -nodefaults -nographic -no-reboot -monitor none \
    -chardev "file,id=console,path=$log,append=on" -serial chardev:console \
    -kernel "$work/vmlinux" -append "$line" \
    -drive "id=root,file=$disk,format=raw,if=none" -device virtio-blk-device,drive=root \
    -netdev tap,id=net0,ifname=bbare0,script=no,downscript=no \
    -device virtio-net-device,netdev=net0,mac=02:ba:0a:fa:00:02 \
    >"$work/bare$1.qemu.log" 2>&1 &
  pid=$!
  until ssh -q -i "$ssh_key" -o ConnectTimeout=2 -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes \
    "root@$bare_ip" true 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "bare QEMU exited:" >&2; tail -n 5 "$work/bare$1.qemu.log" "$log" >&2; exit 1; }
    if [ "$(since "$t0" | cut -d. -f1)" -ge "$timeout" ]; then
      echo "  (bare run $1: not reachable after ${timeout}s; console ends: $(tail -n 1 "$log"))" >&2
      kill "$pid"; wait "$pid" 2>/dev/null || true
      rm -f "$disk"
      return 1
    fi
    sleep 0.2
  done
  since "$t0"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -f "$disk"
}

# Warm-up (page cache, banger's SSH key, the TSC rate), not counted.
banger_run 0 >/dev/null
echo "boot ($kind, QEMU TCG, $(nproc) cores): vm create → vm ssh -- true  vs  bare QEMU → ssh true"
: >"$work/ratios"
i=1
retries=0
while [ "$i" -le "$pairs" ]; do
  # Alternate which goes first, so drift in the machine's load evens out.
  ok=1
  if [ $((i % 2)) = 1 ]; then
    banger_run "$i" >"$work/bn" && bare_run "$i" >"$work/bare" || ok=0
  else
    bare_run "$i" >"$work/bare" && banger_run "$i" >"$work/bn" || ok=0
  fi
  if [ "$ok" = 0 ]; then
    retries=$((retries + 1))
    [ "$retries" -le 3 ] || { echo "too many stalled runs" >&2; exit 1; }
    echo "  pair $i: a run stalled; running the pair again"
    continue
  fi
  bn=$(cat "$work/bn")
  bare=$(cat "$work/bare")
  r=$(ratio "$bn" "$bare")
  echo "$r" >>"$work/ratios"
  echo "  pair $i: banger ${bn}s, bare ${bare}s, ratio ${r}"
  i=$((i + 1))
done
echo "  median ratio: $(median <"$work/ratios") (goal <= 0.85)"
