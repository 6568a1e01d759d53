# Shared set-up of the VM benchmarks (sourced, not run). Each benchmark
# runs in a private network namespace of its own (re-executing itself under
# `unshare -n`), with its own banger home under /tmp: `banger up`, the
# fixture kernel imported as generic-6.12, a test image imported from its
# OCI layout (scripts/make-test-image.sh, cached). Nothing leaves the
# namespace; `banger down --stop-vms` and the home's removal clean up.
#
# BENCH_PROFILE=release uses release binaries (default: dev). Needs root.
set -euo pipefail

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
profile=${BENCH_PROFILE:-dev}
bindir=$root_dir/target/$([ "$profile" = dev ] && echo debug || echo "$profile")

# bench_netns "$0" "$@": re-executes the benchmark in a new network namespace.
bench_netns() {
  if [ -z "${BANGER_BENCH_NETNS:-}" ]; then
    [ "$(id -u)" = 0 ] || { echo "benchmarks need root (network namespace, taps)" >&2; exit 1; }
    # Built outside: the namespace has no route to crates.io (nothing to
    # fetch with --locked and a warm cache, but keep the build out of it).
    (cd "$root_dir" && nice -n 10 cargo build --quiet --locked --profile "$profile" --workspace)
    [ -x "$bindir/guest/banger-agent" ] || (cd "$root_dir" && scripts/build-guest.sh "$bindir/guest")
    export BANGER_BENCH_NETNS=1
    exec unshare -n "$@"
  fi
  ip link set lo up
}

# bench_up KIND: a banger home with KIND (bookworm|busybox) imported as
# image `bench`; sets $home, $work and the `b` function (the CLI).
bench_up() {
  local kind=$1
  local layout
  layout=$("$root_dir/scripts/make-test-image.sh" "$kind" - x:y)
  layout=${layout#oci:}
  layout=${layout%:*}
  work=$(mktemp -d /tmp/banger-bench.XXXXXX)
  home=$work/home
  mkdir -p "$home" "$work/user"
  cat >"$home/banger.toml" <<TOML
[vmm]
# TCG on a loaded machine: be patient.
ready_timeout_secs = 600
TOML
  trap bench_down EXIT
  b up >/dev/null 2>&1
  zstd -dcq "$(bench_shared)/fixtures/kernels/vmlinux-6.12-x86_64.zst" >"$work/vmlinux"
  b kernel import generic-6.12 --vmlinux "$work/vmlinux" >/dev/null
  tar -C "$layout" -cf "$work/image.tar" .
  b image import bench "$work/image.tar" --kernel-ref generic-6.12 >/dev/null
  image_ext4=$home/state/images/bench/rootfs.ext4
  ssh_key=$work/user/.config/banger/id_ed25519
}

bench_shared() {
  echo "${BANGER_SHARED_DIR:-$root_dir/../shared}"
}

b() {
  HOME=$work/user XDG_CONFIG_HOME=$work/user/.config \
    "$bindir/banger" --home "$home" "$@"
}

bench_down() {
  b down --stop-vms >/dev/null 2>&1 || true
  # The ssh masters `vm ssh` left (ControlPersist), each asked to exit.
  for s in "$work"/user/.config/banger/mux/*; do
    [ -S "$s" ] && ssh -o ControlPath="$s" -O exit banger-vm >/dev/null 2>&1 || true
  done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}

now() { date +%s.%N; }

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# PCT of the numbers on stdin (nearest rank)
percentile() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int((p/100)*NR+0.999999); if (i<1) i=1; print a[i]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
