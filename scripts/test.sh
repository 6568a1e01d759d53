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
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${BANGER_TEST_THREADS:-2}"
