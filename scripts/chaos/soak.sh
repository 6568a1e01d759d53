#!/usr/bin/env bash
# The chaos soak: the chaos tier (cli/tests/priv_chaos.rs) at soak sizes —
# 10 clients x 10 create/rm cycles in parallel, 100 seeded kill -9 faults,
# the restart with running VMs — and a leak check after each case.
# Everything runs in a network namespace the test makes; needs root, QEMU,
# busybox-static, umoci, skopeo and docker-registry (scripts/setup.sh).
#
#   scripts/chaos/soak.sh [SEED]     (default: from the clock; printed)
#
# Sizes can be overridden: BANGER_CHAOS_CLIENTS, BANGER_CHAOS_CYCLES,
# BANGER_CHAOS_FAULTS. A failure prints the seed and the faults so far;
# rerun with that seed to replay the same faults.
set -euo pipefail
cd "$(dirname "$0")/../.."
export BANGER_CHAOS_SEED=${1:-${BANGER_CHAOS_SEED:-$(date +%s%N)}}
export BANGER_CHAOS_CLIENTS=${BANGER_CHAOS_CLIENTS:-10}
export BANGER_CHAOS_CYCLES=${BANGER_CHAOS_CYCLES:-10}
export BANGER_CHAOS_FAULTS=${BANGER_CHAOS_FAULTS:-100}
echo "== chaos soak: seed $BANGER_CHAOS_SEED, ${BANGER_CHAOS_CLIENTS}x${BANGER_CHAOS_CYCLES} parallel, $BANGER_CHAOS_FAULTS faults"
nice -n 10 cargo build --workspace --locked
scripts/build-guest.sh >/dev/null
log=${BANGER_CHAOS_LOG:-target/chaos-soak.log}
mkdir -p "$(dirname "$log")"
started=$(date +%s)
set +e
cargo test -p banger --test priv_chaos --locked -- --nocapture 2>&1 | tee "$log" \
  | grep --line-buffered -E '^(CHAOS|FIGURES|  (mid-operation|after it ended))|panicked'
status=${PIPESTATUS[0]}
set -e
echo "== chaos soak: exit $status after $(( $(date +%s) - started ))s (seed $BANGER_CHAOS_SEED; full log: $log)"
exit "$status"
