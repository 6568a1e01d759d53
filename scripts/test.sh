#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, in-process service tests
# and the privileged / end-to-end tier (real registry, nftables and
# hypervisor, each inside network namespaces the tests create themselves).
# Needs root for the privileged tier. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --deps

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --locked
echo "== guest bundle (static agent) for the image and VM tiers"
scripts/build-guest.sh >/dev/null

# Firecracker has no Debian package: say plainly whether its tier runs.
if command -v firecracker >/dev/null 2>&1; then
  echo "== FIRECRACKER TIER: runs against $(firecracker --version 2>/dev/null | head -1)"
else
  echo "== FIRECRACKER TIER NOT RUN: firecracker is not on PATH (no Debian package);"
  echo "   its request bodies are unit-tested against a fake API socket; VMs here boot under QEMU TCG"
fi

# Tiers (README "Tests"): in-process everywhere; priv_* and e2e_* pass a
# gate that, with BANGER_REQUIRE_TIERS=1, fails when their needs are
# missing instead of skipping, and logs each test that ran; check-tiers.sh
# then fails if a priv/e2e test did not run.
echo "== cargo test"
tier_log="$PWD/target/tier-log.txt"
rm -f "$tier_log"
export BANGER_TIER_LOG="$tier_log" BANGER_REQUIRE_TIERS=1
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${BANGER_TEST_THREADS:-2}" || status=$?
echo "== tier check"
scripts/check-tiers.sh "$tier_log" || status=1
[ "$status" = 0 ] || exit "$status"

# The chaos tier (kill -9 of services at seeded random points, parallel
# create/rm, restart with running VMs; leak check after each) runs on its
# own and does not gate: it has a known, unexplained flake (issue #13: one
# guest's agent sometimes never answers its vsock handshake under load).
# Its result is printed either way; scripts/chaos/soak.sh is the long form.
echo "== chaos tier (non-gating)"
if cargo test -p banger --test priv_chaos --locked -- --ignored --test-threads=1; then
  echo "== CHAOS TIER PASSED"
else
  echo "== CHAOS TIER FAILED (non-gating; see the seed and leak report above, and issue #13)"
fi
