#!/usr/bin/env bash
# Builds a test image offline from the internet (only the Debian mirror, via
# debootstrap) and pushes it to a local registry with skopeo.
#
#   scripts/make-test-image.sh bookworm|busybox REGISTRY_ADDR REPO:TAG
#
#   bookworm  debootstrap minbase + systemd, systemd-sysv, openssh-server,
#             iproute2, dbus, udev; pushed with Docker v2 schema 2 media types.
#   busybox   busybox-static and its applet links in a tiny tree; OCI types.
#
# REGISTRY_ADDR is host:port of a plain-HTTP registry (e.g. 127.0.0.1:5000);
# `-` builds the OCI layout without pushing. The rootfs and the OCI layout
# are cached under target/test-cache/<kind>/ (delete that folder to rebuild).
# Prints the layout path (oci:DIR:TAG) on stdout when done.
# Needs root (debootstrap, ownership), debootstrap, busybox-static, umoci, skopeo.
set -euo pipefail

kind=${1:?usage: $0 bookworm|busybox REGISTRY_ADDR REPO:TAG}
registry=${2:?usage: $0 bookworm|busybox REGISTRY_ADDR REPO:TAG}
repo_tag=${3:?usage: $0 bookworm|busybox REGISTRY_ADDR REPO:TAG}

root_dir=$(cd "$(dirname "$0")/.." && pwd)
cache=${BANGER_TEST_CACHE:-$root_dir/target/test-cache}/$kind
rootfs=$cache/rootfs
layout=$cache/oci
tag=latest
mkdir -p "$cache"

need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install $2" >&2; exit 1; }; }
need umoci umoci
need skopeo skopeo

if [ ! -f "$cache/rootfs.done" ]; then
  rm -rf "$rootfs"
  case $kind in
    busybox)
      [ -x /bin/busybox ] || { echo "missing /bin/busybox: apt-get install busybox-static" >&2; exit 1; }
      mkdir -p "$rootfs"/{bin,sbin,etc,proc,sys,dev,tmp,root,usr/bin,usr/sbin}
      chmod 1777 "$rootfs/tmp"
      cp /bin/busybox "$rootfs/bin/busybox"
      for applet in $(/bin/busybox --list-full); do
        [ "$applet" = bin/busybox ] || ln -sf /bin/busybox "$rootfs/$applet"
      done
      printf 'ID=busybox\nNAME=BusyBox\nVERSION_ID=%s\n' \
        "$(/bin/busybox | head -1 | awk '{print $2}' | tr -d v)" >"$rootfs/etc/os-release"
      printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
      printf 'root:x:0:\n' >"$rootfs/etc/group"
      ;;
    bookworm)
      need debootstrap debootstrap
      nice -n 10 debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,openssh-server,iproute2,dbus,udev \
        bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
      # Smaller and reproducible: no apt lists or caches in the image.
      rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
      ;;
    *) echo "unknown image kind $kind (bookworm|busybox)" >&2; exit 2 ;;
  esac
  rm -rf "$layout"
  touch "$cache/rootfs.done"
fi

if [ ! -f "$cache/oci.done" ]; then
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  nice -n 10 umoci insert --image "$layout:$tag" "$rootfs" / >/dev/null
  umoci config --image "$layout:$tag" --config.cmd /sbin/init --os linux --architecture amd64
  umoci gc --layout "$layout"
  touch "$cache/oci.done"
fi

if [ "$registry" != "-" ]; then
  format=()
  [ "$kind" = bookworm ] && format=(--format v2s2)
  skopeo copy --quiet --dest-tls-verify=false "${format[@]}" \
    "oci:$layout:$tag" "docker://$registry/$repo_tag"
fi
echo "oci:$layout:$tag"
