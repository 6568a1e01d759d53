#!/usr/bin/env bash
# Installs everything banger's build and tests need on a fresh Debian 12
# machine, then builds the workspace. Idempotent.
#   scripts/setup.sh          packages + tools + build
#   scripts/setup.sh --deps   packages + tools only
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

packages=$(cat scripts/deps/*.apt | sed 's/#.*//' | tr -s ' \n' '\n' | sed '/^$/d' | sort -u)
missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  log "installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
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
log "building the workspace"
cargo build --workspace --locked
log "building the guest bundle (static banger-agent, first-boot, units) into target/debug/guest"
scripts/build-guest.sh
