#!/usr/bin/env bash
# Benchmark (not a test): banger's pull + ext4 build of the bookworm test
# image against the baseline pipeline `skopeo copy` + `umoci unpack` +
# `mkfs.ext4 -d` of the same image, in the same run; prints both and the
# ratio, plus the time of a re-pull of the already built digest. Each ext4
# writer (`[imagestore] ext4_writer`) is measured in the same run.
#
#   scripts/bench/image-build.sh [bookworm|busybox]
#
# BENCH_WRITERS="builtin mke2fs" (the default) names the writers to measure;
# BENCH_ROUNDS (3) how many alternating rounds of baseline and writers run
# (medians are printed, and each round's ratio).
# BENCH_PROFILE=release builds banger with the release profile (slow to
# compile); the default is the dev profile. Needs root, docker-registry,
# skopeo, umoci, e2fsprogs (and debootstrap on a cold cache).
set -euo pipefail
kind=${1:-bookworm}
root_dir=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root_dir"
profile=${BENCH_PROFILE:-dev}
nice -n 10 cargo build --quiet --profile "$profile" -p banger-imagestore -p banger
bindir=$root_dir/target/$([ "$profile" = dev ] && echo debug || echo "$profile")

scripts/make-test-image.sh "$kind" - "x:y" >/dev/null

work=$(mktemp -d /tmp/banger-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${BENCH_KEEP:-}" ] && cp "$work"/home-*.log /tmp/; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $addr
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
scripts/make-test-image.sh "$kind" "$addr" "bench/$kind:latest" >/dev/null
ref=$addr/bench/$kind:latest

writers=${BENCH_WRITERS:-builtin mke2fs}
rounds=${BENCH_ROUNDS:-3}
now() { date +%s.%N; }
# One imagestore per writer and round, each with an empty home: every timed
# pull downloads and builds (no blob cached), like the baseline's copy.
# max_dir_work is lifted so the 40k-files line measures mke2fs's build
# instead of imagestore's refusal (by default such a directory is refused
# up front with ext4_writer = "mke2fs").
start_store() { # HOME_DIR WRITER
    mkdir -p "$1"
    printf '[imagestore]\ninsecure_registries = ["%s"]\nmax_dir_work = 100000000000\next4_writer = "%s"\n' \
        "$addr" "$2" >"$1/banger.toml"
    "$bindir/banger-imagestore" --home "$1" >"$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do [ -S "$1/run/imagestore.sock" ] && break; sleep 0.05; done
}
stop_store() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }

# Rounds alternate the baseline and each writer, caches dropped before each
# timed step, so drift on a busy machine hits all of them alike; medians
# are reported.
results=()
baseline=()
for r in $(seq "$rounds"); do
    for w in $writers; do
        home=$work/home-$w-$r
        start_store "$home" "$w"
        sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
        t0=$(now)
        "$bindir/banger" --home "$home" --json image pull "$ref" --name bench >"$work/image-$w.json"
        t1=$(now)
        "$bindir/banger" --home "$home" --json image pull "$ref" --name bench >/dev/null
        t2=$(now)
        results+=("$w:$t0:$t1:$t2")
        stop_store
        [ "$r" = "$rounds" ] || rm -rf "$home"
    done
    first=${writers%% *}
    size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["size_bytes"])' "$work/image-$first.json")
    rm -rf "$work/oci" "$work/bundle" "$work/baseline.ext4"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t3=$(now)
    skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/oci:latest"
    t4=$(now)
    umoci unpack --image "$work/oci:latest" "$work/bundle" >/dev/null
    t5=$(now)
    truncate -s "$size" "$work/baseline.ext4"
    mkfs.ext4 -q -F -t ext4 -b 4096 -m 0 -E root_owner=0:0 -d "$work/bundle/rootfs" "$work/baseline.ext4"
    t6=$(now)
    baseline+=("$t3:$t4:$t5:$t6")
done

python3 - "$kind" "$profile" "${baseline[*]}" "${results[@]}" <<'PY'
import statistics, sys
kind, profile, base_runs = sys.argv[1], sys.argv[2], sys.argv[3].split()
med = statistics.median
steps = [[float(x) for x in b.split(":")] for b in base_runs]
copy = med(t[1] - t[0] for t in steps)
unpack = med(t[2] - t[1] for t in steps)
mkfs = med(t[3] - t[2] for t in steps)
totals = [t[3] - t[0] for t in steps]
base = med(totals)
print(f"image {kind} (banger built with the {profile} profile), median of {len(steps)} alternating rounds")
print(f"baseline skopeo copy:                            {copy:7.2f} s")
print(f"baseline umoci unpack:                           {unpack:7.2f} s")
print(f"baseline mkfs.ext4 -d:                           {mkfs:7.2f} s")
print(f"baseline total:                                  {base:7.2f} s  (rounds: {' '.join(f'{t:.2f}' for t in totals)})")
by = {}
for r in sys.argv[4:]:
    w, t0, t1, t2 = r.split(":")
    by.setdefault(w, []).append((float(t1) - float(t0), float(t2) - float(t1)))
for w, runs in by.items():
    ours = med(o for o, _ in runs)
    repull = med(p for _, p in runs)
    each = " ".join(f"{o / b:.2f}" for (o, _), b in zip(runs, totals))
    print(f"banger image pull, ext4_writer={w:8} {ours:7.2f} s  ratio {ours / base:5.2f}  "
          f"(re-pull {repull * 1000:4.0f} ms; per round {each})")
PY

# Second line: one layer of 40k empty files in one directory (an inode
# bomb in a flat directory: quadratic for `mkfs.ext4 -d DIR`).
python3 - "$work/flat" <<'PY'
import hashlib, io, json, os, sys, tarfile
root = sys.argv[1]
blobs = os.path.join(root, "blobs/sha256"); os.makedirs(blobs)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, d), "wb").write(b)
    return {"digest": "sha256:" + d, "size": len(b)}
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
    d = tarfile.TarInfo("flat"); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
    for i in range(40000):
        f = tarfile.TarInfo(f"flat/f{i:05d}"); f.mode = 0o644; t.addfile(f)
layer = buf.getvalue()
l = put(layer); l["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
cfg = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": [l["digest"]]}}).encode())
cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
m = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": cfg, "layers": [l]}).encode())
m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
m["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(root, "index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [m]}))
PY
skopeo copy --quiet --dest-tls-verify=false "oci:$work/flat:latest" "docker://$addr/bench/flat:latest"
flat=()
for w in $writers; do
    start_store "$work/home-flat-$w" "$w"
    t0=$(now)
    "$bindir/banger" --home "$work/home-flat-$w" --json image pull "$addr/bench/flat:latest" --name flat \
        >"$work/flat-$w.json"
    t1=$(now)
    flat+=("$w:$t0:$t1")
    stop_store
done
size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["size_bytes"])' "$work/flat-$first.json")
t1=$(now)
skopeo copy --quiet --src-tls-verify=false "docker://$addr/bench/flat:latest" "oci:$work/flatcopy:latest"
umoci unpack --image "$work/flatcopy:latest" "$work/flatbundle" >/dev/null
t2=$(now)
truncate -s "$size" "$work/flat.ext4"
mkfs.ext4 -q -F -t ext4 -b 4096 -m 0 -N 65536 -E root_owner=0:0 -d "$work/flatbundle/rootfs" "$work/flat.ext4"
t3=$(now)
python3 - "$t1" "$t2" "$t3" "${flat[@]}" <<'PY'
import sys
b0, b1, b2 = map(float, sys.argv[1:4])
base = b2 - b0
print(f"40k empty files in one dir: baseline {base:6.2f} s (mkfs.ext4 -d alone {b2 - b1:6.2f} s)")
for r in sys.argv[4:]:
    w, t0, t1 = r.split(":")
    ours = float(t1) - float(t0)
    print(f"  banger ext4_writer={w:8} {ours:6.2f} s, ratio {ours / base:5.2f}")
PY
