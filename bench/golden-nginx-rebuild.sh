#!/usr/bin/env bash
# A no-change rebuild of examples/golden-nginx as shipped (an OCI image and a boot-tested qcow2
# disk): the step cache gives the layers, the disk cache the disk and its qcow2, the test cache
# the test result; both outputs are still written to the region. Median of RUNS (default 5).
#   KILN_BENCH_HOME  the data directory (default /tmp/kiln-bench-rebuild; built once, cold)
# Usage: bench/golden-nginx-rebuild.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
scripts/setup --bench >&2
cargo build --release --locked -p kiln >&2
kiln="$PWD/target/release/kiln"
export KILN_HOME="${KILN_BENCH_HOME:-/tmp/kiln-bench-rebuild}"
recipe=examples/golden-nginx/recipe.yml
echo "first build (cold unless $KILN_HOME holds it already)" >&2
"$kiln" build "$recipe" -q >&2

times=()
for i in $(seq 1 "$runs"); do
  s=$(date +%s.%N)
  "$kiln" build "$recipe" -q >/dev/null
  e=$(date +%s.%N)
  times+=("$(python3 -c "print(f'{$e - $s:.3f}')")")
  # The build wrote both outputs to the region: its own disk file and its OCI tag.
  rec=$("$kiln" image get golden-nginx -o json)
  python3 - "$rec" <<'PY'
import json, os, sys
r = json.loads(sys.argv[1])
kinds = {o["kind"] for o in r["outputs"]}
assert "oci-layout" in kinds and any(k.startswith("disk-") for k in kinds), kinds
for o in r["outputs"]:
    if o["kind"].startswith("disk-"):
        assert os.path.isfile(o["location"]), o["location"]
assert r["disk"].get("cached"), r["disk"]
assert r["tests"]["status"] == "cached", r["tests"]["status"]
PY
done
median=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "${times[@]}")
echo "| golden-nginx no-change rebuild (OCI image + qcow2 disk), $runs runs | median ${median} s | target under 0.2 s |"
echo "raw runs (s): ${times[*]}"
