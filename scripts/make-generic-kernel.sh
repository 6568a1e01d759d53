#!/usr/bin/env bash
# Builds banger's generic guest kernel: an uncompressed vmlinux with
# everything a Firecracker / QEMU microvm guest needs built in (virtio-mmio,
# virtio-blk/net/console, vsock, ext4, overlayfs, squashfs, devtmpfs,
# IP_PNP, 8250 serial console, PVH; no modules, no initramfs), configured
# from configs/kernel/microvm.fragment over `make defconfig`, then packs
# NAME.tar.zst (vmlinux + config) and prints its catalog entry.
#
# Source: Debian's linux-source-6.12 package (installed with apt when apt
# has it), or a kernel source tarball / unpacked tree given with --source
# (e.g. /usr/src/linux-source-6.1.tar.xz).
#
#   scripts/make-generic-kernel.sh [--source TARBALL|DIR] [--out DIR]
#       [--name NAME] [--base defconfig|tinyconfig] [--jobs N]
#       [--url-base URL] [--check] [--config-only]
#
#   --check        verify tools, fragment and plan without building.
#   --config-only  configure and verify the .config, then stop (quick).
#   --out          default ~/.cache/banger/kernel
#
# Packages it needs (scripts/deps/kernel-build.list) are installed when
# missing. Build with low priority on shared machines:
#   nice -n 19 scripts/make-generic-kernel.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
fragment="$repo/configs/kernel/microvm.fragment"
deps_list="$repo/scripts/deps/kernel-build.list"
source_arg=""
out="${XDG_CACHE_HOME:-$HOME/.cache}/banger/kernel"
name=""
base="defconfig"
jobs=$(nproc)
url_base=""
check=0
config_only=0

log() { printf '\033[1mmake-generic-kernel:\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

while (($#)); do
  case "$1" in
    --source) source_arg=${2:?--source needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a dir}; shift 2 ;;
    --name) name=${2:?--name needs a name}; shift 2 ;;
    --base) base=${2:?--base needs defconfig or tinyconfig}; shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a number}; shift 2 ;;
    --url-base) url_base=${2:?--url-base needs a URL}; shift 2 ;;
    --check) check=1; shift ;;
    --config-only) config_only=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$base" in defconfig|tinyconfig) ;; *) die "--base must be defconfig or tinyconfig" ;; esac
[[ "$jobs" =~ ^[0-9]+$ ]] || die "--jobs must be a number"
[ -f "$fragment" ] || die "missing $fragment"

# Required options: every `CONFIG_X=y` line of the fragment.
required=$(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' "$fragment")
disabled=$(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$fragment")
bad_lines=$(grep -vnE '^(#.*|CONFIG_[A-Z0-9_]+=(y|n|m|[0-9]+|"[^"]*")|)$' "$fragment" || true)
[ -z "$bad_lines" ] || die "malformed lines in $fragment: $bad_lines"
[ -n "$required" ] || die "$fragment requires nothing?"

install_deps() {
  local missing=() p
  # shellcheck disable=SC2013 # one package name per word is the format
  for p in $(sed 's/#.*//' "$deps_list"); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    ((check)) && { log "would install: ${missing[*]}"; return; }
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing build dependencies: ${missing[*]}"
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
}

# Picks the source: --source, else Debian's linux-source-6.12.
find_source() {
  if [ -n "$source_arg" ]; then
    [ -e "$source_arg" ] || die "--source $source_arg does not exist"
    echo "$source_arg"; return
  fi
  local tarball=/usr/src/linux-source-6.12.tar.xz
  if [ ! -f "$tarball" ]; then
    local policy
    policy=$(apt-cache policy linux-source-6.12 2>/dev/null || true)
    if grep -q 'Candidate: [0-9]' <<<"$policy"; then
      if ((check)); then log "would apt-get install linux-source-6.12"; echo "$tarball"; return; fi
      local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
      log "installing linux-source-6.12"
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends linux-source-6.12 >&2
    else
      die "apt has no linux-source-6.12; pass --source with a kernel tarball or tree \
(e.g. /usr/src/linux-source-6.1.tar.xz from the linux-source-6.1 package)"
    fi
  fi
  echo "$tarball"
}

install_deps
src=$(find_source)
log "source: $src; base: $base + $(basename "$fragment"); jobs: $jobs; out: $out"
log "fragment requires $(wc -w <<<"$required") options and disables $(wc -w <<<"$disabled")"
if ((check)); then
  for tool in make gcc bc bison flex tar zstd; do
    command -v "$tool" >/dev/null || log "missing tool: $tool (installed by a real run)"
  done
  log "check done; nothing built"
  exit 0
fi

mkdir -p "$out"
build="$out/build"
if [ -d "$src" ]; then
  tree="$src"
else
  tree="$build/src"
  if [ ! -f "$tree/Makefile" ]; then
    log "unpacking $src"
    rm -rf "$tree"; mkdir -p "$tree"
    tar -xf "$src" -C "$tree" --strip-components=1
  fi
fi
[ -f "$tree/Makefile" ] || die "$tree is not a kernel source tree"
objdir="$build/obj"
mkdir -p "$objdir"
kmake() { make -C "$tree" O="$objdir" ARCH=x86_64 "$@"; }

start=$(date +%s)
log "configuring ($base + fragment, olddefconfig)"
kmake -s "$base"
"$tree/scripts/kconfig/merge_config.sh" -m -O "$objdir" "$objdir/.config" "$fragment" >/dev/null
kmake -s olddefconfig

# Every required option must have survived olddefconfig (a missing
# dependency silently drops options otherwise).
missing=()
for opt in $required; do
  grep -qx "$opt=y" "$objdir/.config" || missing+=("$opt")
done
for opt in $disabled; do
  if grep -q "^$opt=" "$objdir/.config"; then missing+=("!$opt"); fi
done
((${#missing[@]} == 0)) || die "olddefconfig did not keep: ${missing[*]}"
if grep -q '=m$' "$objdir/.config"; then die "modules remain in .config"; fi
log "configuration OK: $objdir/.config"
if ((config_only)); then exit 0; fi

release=$(kmake -s kernelrelease)
mm=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$release")
name=${name:-generic-$mm}
log "building Linux $release as $name (make -j$jobs vmlinux)"
kmake -j"$jobs" vmlinux
built=$(($(date +%s) - start))
log "built in ${built}s"

bundle_dir="$out/$name"
rm -rf "$bundle_dir"; mkdir -p "$bundle_dir"
cp "$objdir/vmlinux" "$bundle_dir/vmlinux"
cp "$objdir/.config" "$bundle_dir/config"
tarball="$out/$name.tar.zst"
tar -C "$bundle_dir" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -cf - vmlinux config | zstd -q -19 -T0 -f -o "$tarball"
sha=$(sha256sum "$tarball" | cut -d' ' -f1)
size=$(stat -c %s "$tarball")
url=""
[ -n "$url_base" ] && url="${url_base%/}/$name.tar.zst"
[ -n "$url" ] || log "no --url-base: fill in tarball_url (http(s):// or oci://) where you host $name.tar.zst"

log "vmlinux: $bundle_dir/vmlinux ($(stat -c %s "$bundle_dir/vmlinux") bytes)"
log "bundle:  $tarball ($size bytes, sha256 $sha)"
log "import it locally: banger kernel import $name --vmlinux $bundle_dir/vmlinux --config $bundle_dir/config --distro generic"
log "catalog entry (stdout):"
cat <<EOF
{
  "name": "$name",
  "distro": "generic",
  "arch": "x86_64",
  "kernel_version": "$release",
  "tarball_url": "$url",
  "tarball_sha256": "$sha",
  "size_bytes": $size,
  "description": "banger generic microVM kernel (virtio-mmio, vsock, ext4, overlayfs; no modules)"
}
EOF
