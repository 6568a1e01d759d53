#!/usr/bin/env bash
# Did every test of the priv and e2e tiers run? Compares the tests the
# priv_*/e2e_* test binaries list (without the #[ignore]d ones, which
# scripts/test.sh runs on its own) with the `ran` lines their gate wrote to
# the tier log (test-support/src/tier.rs), and fails when one is missing or
# any test was skipped. Prints the count per tier.
#   scripts/check-tiers.sh TIER_LOG [LIST IGNORED]
# LIST and IGNORED are the output of `cargo test --workspace -- --list`
# (and `... --list --ignored`), 2>&1; produced here when not given.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 3 ]; then
  cp "$2" "$work/list.raw"; cp "$3" "$work/ignored.raw"
else
  cargo test --workspace --locked -- --list >"$work/list.raw" 2>&1
  cargo test --workspace --locked -- --list --ignored >"$work/ignored.raw" 2>&1
fi

# "binary test" per line, from cargo's `Running ... (target/.../deps/NAME-HASH)`
# headers and libtest's `NAME: test` lines.
tests_of() {
  awk '
    /Doc-tests / { b = "doc-tests"; next }
    /Running / { b = $0; sub(/.*deps\//, "", b); sub(/-[0-9a-f]+\)?$/, "", b); next }
    / test$/ && b != "" { t = $0; sub(/: test$/, "", t); print b, t }
  ' "$1" | sort -u
}
tests_of "$work/list.raw" >"$work/all"
tests_of "$work/ignored.raw" >"$work/ignored"
comm -23 "$work/all" "$work/ignored" >"$work/runnable"
grep -E '^(priv|e2e)_' "$work/runnable" >"$work/expected" || true
touch "$log"
awk '$1 == "ran" { print $3, $4 }' "$log" | sort -u >"$work/ran"
awk '$1 == "unavailable" { print $3, $4 }' "$log" | sort -u >"$work/unavailable"
comm -23 "$work/ran" "$work/unavailable" >"$work/ran_only"

fail=0
inproc=$(grep -cvE '^(priv|e2e)_' "$work/runnable" || true)
echo "== TIER in-process: $inproc tests listed outside priv_*/e2e_* files"
for tier in priv e2e; do
  expected=$(grep -c "^${tier}_" "$work/expected" || true)
  ran=$(awk -v t="$tier" '$1 == "ran" && $2 == t' "$log" | awk '{print $3, $4}' | sort -u | comm -23 - "$work/unavailable" | wc -l)
  echo "== TIER $tier: $ran tests ran ($expected listed in ${tier}_* files; gated tests elsewhere count too)"
done
if [ -s "$work/unavailable" ]; then
  echo "== TIERS NOT RUN BY DESIGN on this machine (each printed its reason above):"
  sed 's/^/   /' "$work/unavailable"
fi
missing=$(comm -23 "$work/expected" <(sort -u "$work/ran_only" "$work/unavailable"))
if [ -n "$missing" ]; then
  echo "== TIER CHECK FAILED: these priv/e2e tests did not run (no gate, or never reached it):"
  echo "$missing" | sed 's/^/   /'
  fail=1
fi
if grep -q '^skipped ' "$log"; then
  echo "== TIER CHECK FAILED: tests were skipped:"
  grep '^skipped ' "$log" | sed 's/^/   /'
  fail=1
fi
[ "$fail" = 0 ] && echo "== TIER CHECK PASSED"
exit "$fail"
