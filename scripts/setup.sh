#!/usr/bin/env bash
# Installs everything banger's build and tests need on a fresh Debian 12
# machine, then builds the workspace. Idempotent.
#   scripts/setup.sh            packages + tools + build (debug: what the tests use)
#   scripts/setup.sh --deps     packages + tools only
#   scripts/setup.sh --release  packages + tools + release build into target/release,
#                               guest bundle included: `target/release/banger up`
#                               then runs the release services (they sit next to it)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

packages=$(cat scripts/deps/*.apt | sed 's/#.*//' | tr -s ' \n' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# apt must never remove or downgrade what the host has: simulate first. A
# package that would be removed because it came from bookworm-backports (the
# host's qemu-utils 10 vs Debian 12's qemu-system-x86 7.2) is kept by taking
# the missing packages of the same source package from that suite too;
# anything else that would be removed or downgraded stops set-up with a
# message saying what and why.
apt_changes() { # PACKAGE... → "remove PKG" / "downgrade PKG OLD NEW" / "unsatisfiable …" lines
  local sim
  if ! sim=$(DEBIAN_FRONTEND=noninteractive apt-get install -s -q --no-install-recommends "$@" 2>&1); then
    echo "unsatisfiable: $(grep -E '^ [^ ]+ : Depends' <<<"$sim" | head -3 | xargs)"
    return
  fi
  while read -r action pkg rest; do
    case "$action" in
      Remv) echo "remove $pkg" ;;
      Inst)
        [[ "$rest" =~ ^\[([^]]+)\]\ \(([^ ]+) ]] || continue
        dpkg --compare-versions "${BASH_REMATCH[2]}" lt "${BASH_REMATCH[1]}" &&
          echo "downgrade $pkg ${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
        ;;
    esac
  done <<<"$sim"
}
ensure_backports() {
  local list=/etc/apt/sources.list.d/banger-backports.sources
  [ -e "$list" ] && return 0
  log "adding bookworm-backports to apt's sources (used only for packages named explicitly)"
  printf '%s\n' "# Added by banger's scripts/setup.sh: bookworm-backports, used only for the" \
    "# packages setup.sh names explicitly (backports are never chosen by default)." \
    "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
    "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" | $SUDO tee "$list" >/dev/null
  $SUDO apt-get update -q
}
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  changes=$(apt_changes "${missing[@]}")
  if [ -n "$changes" ]; then
    # Source packages the host has from bookworm-backports.
    mapfile -t sources < <(dpkg-query -W -f='${Version} ${source:Package}\n' | awk '$1 ~ /~bpo/ {print $2}' | sort -u)
    if ((${#sources[@]})); then
      ensure_backports
      for i in "${!missing[@]}"; do
        src=$(apt-cache show --no-all-versions "${missing[$i]}" 2>/dev/null | awk -F': ' '/^Source:/ {print $2; exit}' | cut -d' ' -f1)
        src=${src:-${missing[$i]}}
        for s in "${sources[@]}"; do
          if [ "$src" = "$s" ] && apt-cache madison "${missing[$i]}" | grep -q bookworm-backports; then
            log "taking ${missing[$i]} from bookworm-backports, like the installed packages of $s"
            missing[$i]="${missing[$i]}/bookworm-backports"
          fi
        done
      done
      changes=$(apt_changes "${missing[@]}")
    fi
  fi
  if [ -n "$changes" ]; then
    log "installing ${missing[*]} would change packages this host already has:"
    sed 's/^/  /' <<<"$changes" >&2
    log "refusing: install them by hand in a way that keeps your packages, then run set-up again"
    exit 1
  fi
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# imagestore builds filesystems from a tar stream (`mke2fs -d -`): that needs
# e2fsprogs >= 1.47.1 with libarchive13. Debian 12 ships 1.47.0, so take
# e2fsprogs and its library (and nothing else) from bookworm-backports,
# after the same simulation: nothing removed or downgraded.
mke2fs_version=$(mke2fs -V 2>&1 | awk 'NR==1 {print $2}')
if ! dpkg --compare-versions "${mke2fs_version:-0}" ge 1.47.1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  ensure_backports
  want=(e2fsprogs/bookworm-backports libext2fs2/bookworm-backports libarchive13)
  changes=$(apt_changes "${want[@]}")
  if [ -n "$changes" ]; then
    log "taking e2fsprogs from bookworm-backports would change packages this host already has:"
    sed 's/^/  /' <<<"$changes" >&2
    log "refusing: install e2fsprogs >= 1.47.1 and libarchive13 by hand, then run set-up again"
    exit 1
  fi
  log "installing e2fsprogs ${mke2fs_version:-?} -> bookworm-backports (mke2fs -d - reads tar) and libarchive13"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${want[@]}"
fi

# Tools from crates.io that Debian does not package, each listed as
# `crate version binary` in scripts/deps/*.cargo.
for f in scripts/deps/*.cargo; do
  [ -e "$f" ] || continue
  sed 's/#.*//' "$f" | while read -r crate version binary; do
    [ -n "${crate:-}" ] || continue
    if ! command -v "$binary" >/dev/null 2>&1; then
      log "cargo install $crate@$version"
      cargo install --locked --quiet "$crate@$version"
    fi
  done
done

# Stock gRPC clients of other languages, for the tests that prove the API
# works for other tools: a venv and a node_modules under target/clients,
# never the host's own Python or Node packages.
clients=target/clients
mkdir -p "$clients"
command -v npm >/dev/null || { log "npm is missing: install Node.js with its npm (Debian: apt-get install npm)"; exit 1; }
if ! cmp -s scripts/deps/clients.pip "$clients/py/.installed" 2>/dev/null; then
  log "pip install $(sed 's/#.*//' scripts/deps/clients.pip | xargs) into $clients/py"
  rm -rf "$clients/py"
  python3 -m venv "$clients/py"
  "$clients/py/bin/pip" install --quiet --disable-pip-version-check -r scripts/deps/clients.pip
  cp scripts/deps/clients.pip "$clients/py/.installed"
fi
if ! cmp -s scripts/deps/clients.npm "$clients/node/.installed" 2>/dev/null; then
  npm_packages=$(sed 's/#.*//' scripts/deps/clients.npm | xargs)
  log "npm install $npm_packages into $clients/node"
  rm -rf "$clients/node"
  mkdir -p "$clients/node"
  (cd "$clients/node" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund $npm_packages)
  cp scripts/deps/clients.npm "$clients/node/.installed"
fi

[ "${1:-}" = "--deps" ] && exit 0
if [ "${1:-}" = "--release" ]; then
  log "building the workspace (release)"
  cargo build --workspace --locked --release
  log "building the guest bundle into target/release/guest"
  scripts/build-guest.sh target/release/guest
  log "done: target/release/banger up starts the release services"
  exit 0
fi
log "building the workspace"
cargo build --workspace --locked
log "building the guest bundle (static banger-agent, first-boot, units) into target/debug/guest"
scripts/build-guest.sh
